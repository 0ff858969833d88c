"""Decoder-only language models (Llama, Qwen2, Mistral, GPT-2, ...): the kind `hf_causal_lm`.

config = the model's config.json as a dict (`model_type` picks the class through AutoModelForCausalLM).
A (context, continuation) request is one sequence, context then continuation; each continuation token
is scored by the logits of the position before it. Generation left-pads the contexts (the batch's
new tokens then start at one column) and decodes greedily with transformers' own `generate`.
The forward is one stage: a decoder-only model has no part whose output could be kept across blocks
that matter (every layer feeds the next), so only tasks whose routing changed are re-run.
"""
from __future__ import annotations

import torch

from flexmerge_core.architectures import lm_requests as rq
from flexmerge_core.architectures.hf_lm import HFLanguageModel, filled, greedy_settings, pad_id


class HFCausalLM(HFLanguageModel):
    kind = "hf_causal_lm"
    auto_class = "AutoModelForCausalLM"

    def continuation_logits(self, module, contexts: torch.Tensor,
                            continuations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Position p is scored on the token at p + 1 when that token is part of the continuation."""
        a, b = rq.lengths(contexts), rq.lengths(continuations)
        if bool((a == 0).any()):
            raise ValueError("a causal LM scores a continuation only after a non-empty context")
        width = int((a + b).max())
        ids = torch.full((len(a), width), rq.PAD, dtype=torch.int64, device=contexts.device)
        targets = torch.full_like(ids, rq.PAD)
        for row in range(len(a)):
            n, m = int(a[row]), int(b[row])
            ids[row, :n] = contexts[row, :n]
            ids[row, n:n + m] = continuations[row, :m]
            targets[row, n - 1:n + m - 1] = continuations[row, :m]
        ids, mask = filled(ids, pad_id(module))
        return module(input_ids=ids, attention_mask=mask).logits, targets

    def generate(self, module, contexts: torch.Tensor, max_new: int) -> torch.Tensor:
        a = rq.lengths(contexts)
        width = contexts.shape[1]
        left = torch.full_like(contexts, rq.PAD)
        for row in range(len(a)):
            n = int(a[row])
            left[row, width - n:] = contexts[row, :n]
        ids, mask = filled(left, pad_id(module))
        out = module.generate(input_ids=ids, attention_mask=mask, **greedy_settings(module, max_new))
        return out[:, width:]


ADAPTERS = (HFCausalLM(),)
