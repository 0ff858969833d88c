"""The `text_classification_rank` task kind: pick the answer choice the language model finds most likely.

Each example: an input text, a list of answer choices (a column, or fixed in the spec, e.g. GLUE's
["negative", "positive"]) and the right one (an index, or the choice's text). The model scores every
choice by its length-normalised log-likelihood: the sum of its tokens' log-probabilities given the
input, over its number of tokens (T5: the choice as decoder targets, end-of-sequence included; causal
LMs: the choice as a continuation of the input). The best-scoring choice is the prediction; ties go to
the first. Metric: accuracy. Why rank instead of generation: the score is a smooth function of the
weights and never depends on decoding settings (as in T0 and FusionBench's flan-T5 GLUE tasks).
"""
from __future__ import annotations

from typing import Any

import torch

from flexmerge_core.architectures import lm_requests as rq
from flexmerge_core.tasks.text_data import (TextData, TextKind, column, context_ids, continuation_ids, row_error,
                                            row_text)


def _label(data: TextData, row: dict, index: int, choices: list[str]) -> int:
    value = column(data, row, index, "label", "label")
    if isinstance(value, str) and value in choices:
        return choices.index(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
        raise row_error(data, index, f"has label {value!r}, not one of its {len(choices)} choices "
                                     f"(an index or the choice's text)")
    return value


class TextClassificationRank(TextKind):
    name = "text_classification_rank"
    metric = "accuracy"

    def tokenize(self, data: TextData, examples: list[dict], tokenizer) -> tuple[dict[str, torch.Tensor], dict]:
        prefix = data.setting("choice_prefix", " ")
        requests, labels = [], []
        for i, row in enumerate(examples):
            choices = data.doc.get("choices") or column(data, row, i, "choices", "choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                raise row_error(data, i, "needs a non-empty list of text choices")
            context = context_ids(tokenizer, row_text(data, row, i))
            requests.append([(context, continuation_ids(tokenizer, prefix + c)) for c in choices])
            labels.append(_label(data, row, i, choices))
        width = max(len(r) for r in requests)
        padded = [r + [(r[0][0], [])] * (width - len(r)) for r in requests]   # empty choices never win
        return {"inputs": rq.pack(rq.SCORE, padded), "targets": torch.tensor(labels, dtype=torch.int64)}, {}

    def score(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict[str, Any]) -> torch.Tensor:
        """1.0 where the choice of highest mean token log-probability is the right one, else 0.0."""
        total, count = outputs[..., 0], outputs[..., 1]
        mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("-inf")))
        return (mean.argmax(dim=1) == targets).float()
