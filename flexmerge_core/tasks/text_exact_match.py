"""The `text_generation_exact_match` task kind: greedy generation compared with reference answers.

Each example: an input text and one or more reference answers (a string or a list of strings). The
model decodes greedily up to `max_new_tokens` (spec, default 16) new tokens, stopping at its
end-of-sequence token; the example scores 1 when the decoded text equals a reference after
normalisation (lower case, punctuation and the articles a/an/the removed, whitespace collapsed, as in
SQuAD's evaluation), else 0. Metric: exact match.
"""
from __future__ import annotations

import re
import string
from typing import Any

import torch

from flexmerge_core.architectures import lm_requests as rq
from flexmerge_core.tasks.text_data import TextData, TextKind, column, context_ids, row_error, row_text

DEFAULT_MAX_NEW_TOKENS = 16
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _answers(data: TextData, row: dict, index: int) -> list[str]:
    value = column(data, row, index, "answer", "answer")
    answers = [value] if isinstance(value, str) else value
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise row_error(data, index, "needs an answer (a string or a list of strings)")
    return answers


class TextGenerationExactMatch(TextKind):
    name = "text_generation_exact_match"
    metric = "exact match"

    def tokenize(self, data: TextData, examples: list[dict], tokenizer) -> tuple[dict[str, torch.Tensor], dict]:
        requests = [[(context_ids(tokenizer, row_text(data, row, i)), [])] for i, row in enumerate(examples)]
        answers = [_answers(data, row, i) for i, row in enumerate(examples)]
        inputs = rq.pack(rq.GENERATE, requests, data.setting("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        return {"inputs": inputs, "targets": torch.arange(len(examples), dtype=torch.int64)}, {"answers": answers}

    def score(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict[str, Any]) -> torch.Tensor:
        """1.0 where the normalised generation equals a normalised reference answer of the example."""
        tokenizer, answers = head["tokenizer"], head["answers"]
        hits = []
        for generated, index in zip(outputs[:, 0].tolist(), targets.tolist()):
            text = tokenizer.decode([t for t in generated if t != rq.PAD], skip_special_tokens=True)
            hits.append(normalize_answer(text) in {normalize_answer(a) for a in answers[index]})
        return torch.tensor(hits, dtype=torch.float32)
