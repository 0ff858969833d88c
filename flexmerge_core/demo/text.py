"""The embedded text demo zoo (`demo-text`): a tiny Llama, pretrained on generated reviews, then fully
fine-tuned on 8 text-classification tasks scored by rank classification.

Why: the vision demo shows FlexMerge on image encoders; language models are the other half of the
users, with another adapter (`hf_causal_lm`), another task kind (`text_classification_rank`) and another
data format (jsonl + a text data spec). This zoo exercises that whole path offline: every sentence and
the tokenizer are made by the build, deterministically for a seed (one torch thread per job,
deterministic kernels), and cached in `cache/demo-text-zoo` under the recipe hash, like the vision demo.

Why a decoder (Llama) and not T5: rank classification of a causal LM is one forward pass over prompt +
answer, the family users merge most (Llama, Qwen, Mistral), and `LlamaForCausalLM` has no parts that
the tiny size would make odd (T5's relative attention buckets and tied encoder/decoder embeddings need a
larger model to mean anything). Untied input/output embeddings: the output rows of the answer words
are where a task's answers live, and every stored tensor is merged once.

Recipe (FULL, version 1; every number is a TextDemoConfig field, hashed into the manifest):
- model: `LlamaForCausalLM(hidden 64, 2 layers, 4 heads, MLP 128)`, 93,504 parameters, a word-level
  vocabulary of 88 tokens (`tokenizers` WordLevel over the generated words, [BOS] before every input,
  saved as a PreTrainedTokenizerFast beside the pretrained weights).
- pretraining: next-token prediction over 20,000 generated reviews (text_tasks: one or two agreeing
  clauses of "the <noun> was [not|very] <adjective>" about one domain), 600 AdamW steps of 64, lr 3e-3,
  weight decay 0.05 on matrices; held-out next-token accuracy is reported (about 0.51: most words of a
  review are free choices).
- tasks (text_tasks.TASKS): sentiment (positive/negative) in four domains with their own nouns, topic
  (which of four subjects) in four phrasings of the question; 2,000 training and 300 held-out reviews
  per task, 20% of clauses negated ("was not dull" is positive). Full fine-tune: 200 AdamW steps of 64,
  lr 1e-3, no weight decay, cross-entropy over the task's answer choices with label smoothing 0.1.
- build: the pretraining job and the fine-tunes run on `demo.workers` (one process per core, one
  thread each); the models are written as `save_pretrained` folders with jsonl held-out sets and text
  data specs and imported with `importers.hf_lm` (the path a user's own LM zoo takes); fine-tuned
  scores are measured by the engine (rank classification), not by the trainer.
- measured (seed 0, 2026-11-25, 2 cores shared with other jobs, load ~10): `zoo build-demo --text
  --force` 209 s and 147 s wall, 62 and 59 CPU-s (the build got 29-40% of the machine); the two
  builds' files are byte-identical. Fine-tuned average 99.96%;
  Task Arithmetic on the greedy plan: 46.0% at 1x (gap 53.9 points, goal >= 10: one model for both
  questions answers neither), 92.8% at 2x (gap 7.1, goal <= 27); within-family block cosine 0.473 vs
  0.083 across, ratio 5.71 (goal >= 3). A rebuild gives the same bits (tests/test_demo_text.py).
- why this recipe (measured on the way, each a full build; the goals are those of demo/report.py):
  1. fine-tuning on the whole vocabulary's cross-entropy gave every task vector the same "push every
     other word down" direction (LM-head cosine 0.45 between unrelated tasks; ratio 1.54). Restricting it
     to the answer choices, with label smoothing (the final norm's gain no longer grows alike in every
     task): ratio 3.66, 1x gap 38 points, but the 2x gap 39: the sentiment tasks' vectors were hardly
     alike (block cosine 0.02-0.15), so the greedy plan merged across families at 2x.
  2. SGD instead of AdamW: one sentiment fine-tune did not learn (50%). Pretraining clauses of
     independent polarity (no polarity feature before fine-tuning): sentiment cosines 0.13-0.51, but
     merging the four sentiment tasks alone gave chance (each fine-tune built its own feature);
     independent domains too: worse. Adam eps 1e-4 / 1e-3, lr 5e-4: 2x gaps 0.22-0.33.
  3. Agreeing clauses (the LM learns polarity and domain, the fine-tunes read them out), batch 64
     instead of 32 (half the gradient noise), and topic questions of one shape ("what is it about ?",
     "which category fits ?", ...; a two-word "subject :" had cosine 0.3 with the others): the numbers
     above.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from flexmerge_core.cache import atomic_directory, cache_root, content_hash
from flexmerge_core.demo import text_tasks, text_training
from flexmerge_core.demo.publish import is_built, publish, update_manifest
from flexmerge_core.demo.report import merge_report
from flexmerge_core.demo.workers import BuildPool

Progress = Callable[[int, int, str], None]
RECIPE_NAME = "flexmerge-demo-text"
RECIPE_VERSION = 1  # bump when the code changes what a config builds
ARCHITECTURE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 4, "max_position_embeddings": 32}
ZOO_NAME = "demo-text"


@dataclass(frozen=True)
class TextDemoConfig:
    """Everything that determines the built zoo (hashed into the manifest's recipe)."""

    architecture: dict = field(default_factory=lambda: dict(ARCHITECTURE))
    tasks: tuple[str, ...] = tuple(t.name for t in text_tasks.TASKS)
    pretrain_sentences: int = 20000
    pretrain_steps: int = 600
    pretrain_lr: float = 3e-3
    pretrain_weight_decay: float = 0.05
    batch_size: int = 64
    train_examples: int = 2000
    heldout_examples: int = 300
    finetune_batch_size: int = 64
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    label_smoothing: float = 0.1
    negation: float = 0.2
    clip_norm: float = 1.0


FULL = TextDemoConfig()
MICRO = TextDemoConfig(
    architecture={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "num_key_value_heads": 2, "max_position_embeddings": 32},
    tasks=("sentiment-films", "sentiment-meals", "topic-about"),
    pretrain_sentences=256, pretrain_steps=4, train_examples=64, heldout_examples=16, finetune_steps=4,
)


def recipe_hash(config: TextDemoConfig, seed: int) -> str:
    return content_hash(RECIPE_NAME, RECIPE_VERSION, asdict(config), seed)


def default_path() -> Path:
    return cache_root() / "demo-text-zoo"


def is_current(folder: Path, config: TextDemoConfig, seed: int = 0) -> bool:
    """True when `folder` holds a complete text demo zoo (it opens, has a report) built by this recipe."""
    return is_built(folder, recipe_hash(config, seed))


def train_text_models(config: TextDemoConfig = FULL, seed: int = 0, progress: Progress | None = None,
                      workers: int | None = None):
    """(pretrained state dict, pretraining next-token accuracy, {task: state dict}, {task: held-out
    (prompts, labels)}): the training part of a build, on `workers` processes (1: in this process)."""
    report = progress or (lambda done, total, message: None)
    total = len(config.tasks) + 2
    with BuildPool(workers) as pool:
        report(0, total, f"pretraining ({pool.workers} worker{'s' if pool.workers > 1 else ''})")
        pretraining = pool.submit(text_training.pretrain, config, seed)
        data = {name: text_training.task_examples(name, config.train_examples, config.heldout_examples, seed,
                                                  config.negation) for name in config.tasks}
        pretrained, pretrain_accuracy = pretraining.result()
        report(1, total, "fine-tuning")
        jobs = {name: pool.submit(text_training.finetune, pretrained, name, config, seed, *data[name][:2])
                for name in config.tasks}
        states = {}
        for done, name in enumerate(config.tasks, start=2):
            report(done, total, f"fine-tuning {name}")
            states[name] = jobs[name].result()
    report(total, total, "done")
    return pretrained, pretrain_accuracy, states, {name: data[name][2:] for name in config.tasks}


def _save_model(config: TextDemoConfig, state: dict, folder: Path, tokenizer=None) -> None:
    """A `save_pretrained` folder of the model with `state` (and the tokenizer, for the pretrained one),
    without transformers' per-file progress bar (the build draws its own)."""
    from transformers.utils import logging

    model = text_training.build_model(config.architecture)
    model.load_state_dict(state)
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if shown:
            logging.enable_progress_bar()
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _save_heldout(task: text_tasks.TextTaskSpec, prompts, labels, folder: Path) -> dict:
    """The task's held-out set as jsonl ({"input", "label"}) beside the folder; its text data spec."""
    source = folder / f"{task.name}.jsonl"
    source.write_text("".join(json.dumps({"input": " ".join(p), "label": int(y)}) + "\n"
                              for p, y in zip(prompts, labels)))
    return {"kind": "text_classification_rank", "source": source.name, "choices": list(task.choices),
            "choice_prefix": " "}


def write_source(folder: Path, config: TextDemoConfig, pretrained, states: dict, heldout: dict) -> dict:
    """The models as `save_pretrained` folders (`pretrained/`, `<task>/`) and the held-out sets as jsonl
    with text data specs (`data/`); returns the importer's arguments (models, data)."""
    from flexmerge_core.importers.hf_lm import PRETRAINED

    _save_model(config, pretrained, folder / "pretrained", text_training.build_tokenizer())
    (folder / "data").mkdir()
    models, data = {PRETRAINED: folder / "pretrained"}, {}
    for name, state in states.items():
        _save_model(config, state, folder / name)
        models[name] = folder / name
        data[name] = (_save_heldout(text_tasks.TASKS_BY_NAME[name], *heldout[name], folder / "data"), folder / "data")
    return {"models": models, "data": data}


def build_text_demo_zoo(out=None, seed: int = 0, force: bool = False, progress: Progress | None = None,
                        config: TextDemoConfig | None = None, workers: int | None = None) -> Path:
    """Build the text demo zoo into `out` (default cache/demo-text-zoo) unless a current one is there.

    Trained models are written as HF folders + jsonl held-out sets and imported (importers.hf_lm) under
    a hidden temporary name; the fine-tuned scores and the merge report are measured there, and the
    folder is renamed into place at the end: it appears complete or not at all.
    """
    from flexmerge_core.evaluation.evaluate import finetuned_accuracies
    from flexmerge_core.evaluation.task_eval import ScoreBook
    from flexmerge_core.importers.hf_lm import import_lm_models
    from flexmerge_core.zoo.loader import open_zoo

    config = config or FULL
    out = Path(out) if out is not None else default_path()
    if not force and is_current(out, config, seed):
        return out
    start = time.perf_counter()
    pretrained, pretrain_accuracy, states, heldout = train_text_models(config, seed, progress, workers)
    families = [text_tasks.TASKS_BY_NAME[name].family for name in config.tasks]

    def build(tmp: Path) -> None:
        staged = tmp / "staged"
        with tempfile.TemporaryDirectory(prefix="flexmerge-text-demo-", dir=tmp) as source:
            import_lm_models(**write_source(Path(source), config, pretrained, states, heldout), out=staged,
                             name=ZOO_NAME, source={"demo": ZOO_NAME})
        finetuned = finetuned_accuracies(open_zoo(staged), book=ScoreBook(False))
        update_manifest(staged, finetuned=finetuned,
                        recipe={"name": RECIPE_NAME, "source": {"format": "demo"}, "version": RECIPE_VERSION,
                                "hash": recipe_hash(config, seed),
                                "seed": seed, "config": asdict(config),
                                "families": dict(zip(config.tasks, families))})
        report = merge_report(open_zoo(staged), families)
        report["pretrain_next_token_accuracy"] = round(pretrain_accuracy, 4)
        report["build_seconds"] = round(time.perf_counter() - start, 1)
        report["parameters"] = sum(t.numel() for t in pretrained.values())
        update_manifest(staged, recipe={"report": report})
        publish(tmp, staged)

    return atomic_directory(out, build)


def ensure_text_demo_zoo(progress: Progress | None = None) -> Path:
    """The cached text demo zoo folder, built first when missing, incomplete or from an older recipe."""
    return build_text_demo_zoo(progress=progress)
