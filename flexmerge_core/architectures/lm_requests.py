"""The one tensor a language-model adapter's `forward` takes: scoring or generation requests.

Why a packed tensor: evaluation feeds `HeldOut.inputs[i:j]` to `adapter.forward(module, batch)` and hands
the output to the task kind's `score`, batch by batch, on the evaluation device. Text tasks need two
things from a language model: the log-likelihood of given continuations (rank classification) and
greedy generations (exact match). Both are requests about (context, continuation) token pairs, so they
travel as one int64 tensor whose first column says what is asked; the adapter knows how its family
feeds a context and a continuation (T5: encoder input and decoder targets; causal LMs: one sequence).

Layout: int64 [N, C, 2, 1 + L] (C requests per example, e.g. one per answer choice):
    [..., 0, 0] the mode (SCORE or GENERATE); [..., 1, 0] max new tokens (GENERATE);
    [..., 0, 1:] context token ids, [..., 1, 1:] continuation token ids (SCORE), both PAD at the right.
Outputs: SCORE -> float32 [N, C, 2] = (sum of the continuation tokens' log-probabilities, their count);
GENERATE -> int64 [N, C, max new tokens] generated ids (end-of-sequence and what follows dropped), PAD
at the right. Requests are independent: any split of the rows gives the same outputs.
"""
from __future__ import annotations

from typing import Sequence

import torch

SCORE, GENERATE = 0, 1
PAD = -1


def pack(mode: int, examples: Sequence[Sequence[tuple[Sequence[int], Sequence[int]]]],
         max_new_tokens: int = 0) -> torch.Tensor:
    """examples[i][c] = (context ids, continuation ids) -> the request tensor (every example has C requests)."""
    width = max((len(seq) for ex in examples for pair in ex for seq in pair), default=0)
    choices = {len(ex) for ex in examples}
    if len(choices) != 1:
        raise ValueError(f"every example needs the same number of requests, found {sorted(choices)}")
    out = torch.full((len(examples), choices.pop(), 2, 1 + width), PAD, dtype=torch.int64)
    out[..., 0, 0] = mode
    out[..., 1, 0] = max_new_tokens
    for i, ex in enumerate(examples):
        for c, (context, continuation) in enumerate(ex):
            out[i, c, 0, 1:1 + len(context)] = torch.as_tensor(list(context), dtype=torch.int64)
            out[i, c, 1, 1:1 + len(continuation)] = torch.as_tensor(list(continuation), dtype=torch.int64)
    return out


def unpack(requests: torch.Tensor) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(mode, max_new_tokens, contexts [N*C, Lc], continuations [N*C, Lt]), each trimmed to its longest row."""
    if requests.dim() != 4 or requests.shape[2] != 2 or requests.dtype != torch.int64:
        raise ValueError(f"language-model requests must be int64 [N, C, 2, 1 + L], got {list(requests.shape)} "
                         f"{requests.dtype}")
    mode, max_new = int(requests[0, 0, 0, 0]), int(requests[0, 0, 1, 0])
    flat = requests.reshape(-1, 2, requests.shape[-1])[..., 1:]
    return mode, max_new, trim(flat[:, 0]), trim(flat[:, 1])


def trim(rows: torch.Tensor) -> torch.Tensor:
    """Right-padded rows without their all-PAD columns."""
    used = int(lengths(rows).max()) if rows.numel() else 0
    return rows[:, :used]


def lengths(rows: torch.Tensor) -> torch.Tensor:
    """Tokens per right-padded row."""
    return (rows != PAD).sum(dim=1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, t]) under logits[b, t] (float32), 0 where targets are PAD."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets == PAD, 0.0)


def scored(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float32 [B, 2] of (summed log-probabilities, number) of the scored tokens (`targets` not PAD)."""
    return torch.stack([token_logprobs(logits, targets).sum(dim=1), lengths(targets).float()], dim=-1)


def cut_generations(generated: torch.Tensor, eos: set[int], width: int) -> torch.Tensor:
    """Generated ids [B, T] -> [B, width]: the first end-of-sequence token and all after it set to PAD."""
    out = torch.full((generated.shape[0], width), PAD, dtype=torch.int64, device=generated.device)
    out[:, :generated.shape[1]] = generated[:, :width]
    stops = torch.isin(out, torch.tensor(sorted(eos), dtype=torch.int64, device=out.device))
    out[stops.cumsum(dim=1) > 0] = PAD
    return out
