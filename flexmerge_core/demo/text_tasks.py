"""Offline text generators for the text demo zoo: a pretraining corpus and two families of four tasks.

Why generated text: a fresh machine has no corpora, so every sentence is made here from word lists and
templates. Every example is a short product review ("the plot was not dull and the actor was superb").
The two families ask two different questions of such reviews, each in four variants:

- sentiment (is the review positive or negative?) in four domains, each with its own nouns: films,
  meals, hotels and gadgets (`sentiment-films`, ...). One question in four vocabularies, like one
  digit question in four fonts: the tasks need the same computation, so their task vectors align.
- topic (which of four subjects is the review about?) asked in four phrasings of the question
  (`topic-about`, ...), over reviews of every domain.

A task is prompt + answer words: the model reads "<review> . <question>" and the answer is one of
the task's choices; held-out examples are scored by rank classification (each choice's length-
normalised log-likelihood). The pretraining corpus is the same kind of review without any question
or answer word, so no task is solved before fine-tuning. Every generator takes a numpy Generator;
callers seed it from (seed, stream, index).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

DOMAINS = {
    "films": ("film", "plot", "actor", "scene", "ending", "script", "score", "director"),
    "meals": ("soup", "pasta", "waiter", "dessert", "salad", "chef", "bread", "menu"),
    "hotels": ("room", "bed", "lobby", "staff", "pool", "view", "shower", "breakfast"),
    "gadgets": ("phone", "battery", "screen", "camera", "charger", "speaker", "keyboard", "case"),
}
POSITIVE = ("great", "lovely", "superb", "excellent", "wonderful", "pleasant", "brilliant", "charming")
NEGATIVE = ("awful", "dull", "terrible", "poor", "boring", "dreadful", "horrible", "bland")
INTENSIFIERS = ("very", "really", "quite", "truly", "rather")
OPENERS = ("honestly", "overall", "frankly", "well", "so")
LINKS = ("and", "while", "but", "although")
SENTIMENT_CHOICES = ("positive", "negative")
TOPIC_CHOICES = ("cinema", "food", "travel", "tech")   # one per domain, in DOMAINS order
SENTIMENT_QUESTION = ("sentiment", "?")
TOPIC_QUESTIONS = {
    "about": ("what", "is", "it", "about", "?"),
    "category": ("which", "category", "fits", "?"),
    "kind": ("what", "kind", "is", "it", "?"),
    "subject": ("which", "subject", "is", "this", "?"),
}


@dataclass(frozen=True)
class TextTaskSpec:
    """A demo task: its family (the question), the answer choices, and what varies (domains, phrasing)."""

    name: str
    family: str
    choices: tuple[str, ...]
    domains: tuple[str, ...]        # the reviews' domains
    question: tuple[str, ...]       # the words after the review


TASKS: tuple[TextTaskSpec, ...] = (
    *(TextTaskSpec(f"sentiment-{d}", "sentiment", SENTIMENT_CHOICES, (d,), SENTIMENT_QUESTION) for d in DOMAINS),
    *(TextTaskSpec(f"topic-{p}", "topic", TOPIC_CHOICES, tuple(DOMAINS), q) for p, q in TOPIC_QUESTIONS.items()),
)
TASKS_BY_NAME = {t.name: t for t in TASKS}
FAMILY_NAMES = tuple(dict.fromkeys(t.family for t in TASKS))
SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def vocabulary() -> list[str]:
    """Every word a generator can emit (the specials first), in a fixed order: the tokenizer's vocabulary."""
    words = {"the", "was", "is", "not", "."}
    for group in (*DOMAINS.values(), POSITIVE, NEGATIVE, INTENSIFIERS, OPENERS, LINKS, SENTIMENT_CHOICES,
                  TOPIC_CHOICES, SENTIMENT_QUESTION, *TOPIC_QUESTIONS.values()):
        words.update(group)
    return list(SPECIALS) + sorted(words)


def task_index(name: str) -> int:
    """The task's place in TASKS: seeds follow the task, not its place in a chosen subset."""
    return list(TASKS_BY_NAME).index(name)


def _pick(rng: np.random.Generator, words) -> str:
    return words[int(rng.integers(len(words)))]


def _clause(rng: np.random.Generator, nouns, positive: bool, negation: float) -> list[str]:
    """'the plot was [very] superb' or, with probability `negation`, 'the plot was not dull' (same polarity)."""
    negated = rng.random() < negation
    adjective = _pick(rng, POSITIVE if positive != negated else NEGATIVE)
    words = ["the", _pick(rng, nouns), "was"]
    if negated:
        words.append("not")
    elif rng.random() < 0.4:
        words.append(_pick(rng, INTENSIFIERS))
    return words + [adjective]


def review(rng: np.random.Generator, domain: str, polarity: Callable[[], bool], negation: float) -> list[str]:
    """One review of `domain`: one or two clauses, each of the polarity `polarity()` draws."""
    nouns = DOMAINS[domain]
    words = [_pick(rng, OPENERS)] if rng.random() < 0.3 else []
    words += _clause(rng, nouns, polarity(), negation)
    if rng.random() < 0.6:
        words += [_pick(rng, LINKS)] + _clause(rng, nouns, polarity(), negation)
    return words + ["."]


def sample_pretraining(n: int, rng: np.random.Generator, negation: float) -> list[list[str]]:
    """n reviews of random domains and polarities: the generic next-token corpus. The clauses of a
    review agree (as in the tasks), so predicting the second clause teaches the LM a domain feature and
    a polarity feature, which the fine-tunes then read out."""
    domains = list(DOMAINS)
    out = []
    for _ in range(n):
        domain, positive = _pick(rng, domains), bool(rng.integers(2))
        out.append(review(rng, domain, lambda: positive, negation))
    return out


def sample_task(task: TextTaskSpec, n: int, rng: np.random.Generator,
                negation: float) -> tuple[list[list[str]], np.ndarray]:
    """n prompts (review + question words) and their answer indices into `task.choices`."""
    prompts, labels = [], []
    for _ in range(n):
        domain = _pick(rng, task.domains)
        positive = bool(rng.integers(2))
        prompts.append(review(rng, domain, lambda: positive, negation) + list(task.question))
        labels.append((0 if positive else 1) if task.family == "sentiment" else list(DOMAINS).index(domain))
    return prompts, np.array(labels, dtype=np.int64)
