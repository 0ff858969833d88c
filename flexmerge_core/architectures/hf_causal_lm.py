"""Decoder-only language models (Llama, Qwen2, Mistral, GPT-2, ...): the kind `hf_causal_lm`.

config = the model's config.json as a dict (`model_type` picks the class through AutoModelForCausalLM).
A (context, continuation) request is one sequence, context then continuation; each continuation token
is scored by the logits of the position before it. Generation left-pads the contexts (the batch's
new tokens then start at one column) and decodes greedily with transformers' own `generate`.
Stages (scoring): what runs before the first decoder layer (embeddings), then one stage per decoder
layer, the last one with the final norm and head; a stage value is (requests, hidden states), so a change
in layer k re-runs layers k.. only. Each stage is the model's own forward with the other layers passed
through (their `forward` returns its input) and the stage's input put in place of its layer's input by a
hook: attention masks, position embeddings and per-layer attention types stay transformers' own, for
any family that keeps its layers in one ModuleList (`num_hidden_layers` long). Generation runs every layer
at each new token, so it happens in the last stage; the earlier ones pass the requests on.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch

from flexmerge_core.architectures import lm_requests as rq
from flexmerge_core.architectures.base import StageSplit
from flexmerge_core.architectures.hf_lm import (HFLanguageModel, Requests, filled, generations, greedy_settings,
                                                outputs, pad_id, read_requests)


class HFCausalLM(HFLanguageModel):
    kind = "hf_causal_lm"
    auto_class = "AutoModelForCausalLM"

    def stages(self, module) -> StageSplit:
        """Without one ModuleList of decoder layers, a single stage: the whole forward."""
        prefix, layers = decoder_layers(module)
        order = {n: i for i, n in enumerate(module.state_dict(keep_vars=True))}
        first_layer = min((i for n, i in order.items() if layers and n.startswith(prefix)), default=len(order))

        def stage_of(name: str) -> int:
            if layers and name.startswith(prefix):
                return int(name[len(prefix):].split(".")[0]) + 1
            return 0 if order[name] < first_layer else len(layers)   # model order: before the layers or after

        return StageSplit(num_stages=len(layers) + 1, stage_of=stage_of,
                          run=lambda x, stage: run_stage(module, layers, x, stage))


def decoder_layers(module) -> tuple[str, torch.nn.ModuleList]:
    """('model.layers.', the ModuleList) of the decoder layers (the ModuleList of num_hidden_layers modules);
    ('', an empty ModuleList) when there is none."""
    count = getattr(module.config.get_text_config(), "num_hidden_layers", None)
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) == count:
            return name + ".", child
    return "", torch.nn.ModuleList()


class _Stop(Exception):
    """Raised by a hook once a stage's output is in hand: the rest of the forward is not needed."""


def _pass(hidden_states, *args, **kwargs):
    return hidden_states


@contextmanager
def _only_layer(layers: torch.nn.ModuleList, stage: int, hidden: Optional[torch.Tensor], last: bool):
    """Stage 0: catch layer 0's input. Stage k: layers before k - 1 passed through, layer k - 1 fed `hidden`;
    its output caught unless `last` (then the forward runs on to the logits). Yields {"hidden": caught}."""
    caught, handles, passed = {}, [], list(layers[:max(stage - 1, 0)])
    if not layers:
        yield caught
        return

    def feed(layer, args, kwargs):
        if stage == 0:
            caught["hidden"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def catch(layer, args, output):
        caught["hidden"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    layer = layers[max(stage - 1, 0)]
    handles.append(layer.register_forward_pre_hook(feed, with_kwargs=True))
    if stage > 0 and not last:
        handles.append(layer.register_forward_hook(catch))
    for other in passed:
        other.forward = _pass
    try:
        yield caught
    finally:
        for handle in handles:
            handle.remove()
        for other in passed:
            del other.forward


def run_stage(module, layers, x, stage: int):
    """Stage `stage` on (requests, hidden states) (stage 0: on the request tensor); see the module docstring."""
    requests, hidden = (x, None) if stage == 0 else x
    r = read_requests(module, requests)
    last = stage == len(layers)
    if r.mode == rq.GENERATE:
        return generate(module, r) if last else (requests, None)
    ids, targets = sequences(r.contexts, r.continuations)
    ids, mask = filled(ids, pad_id(module))
    parts = []
    for rows in r.chunks:
        with _only_layer(layers, stage, None if hidden is None else hidden[rows], last) as caught:
            try:
                logits = module(input_ids=ids[rows], attention_mask=mask[rows]).logits
            except _Stop:
                parts.append(caught["hidden"])
                continue
        parts.append(rq.scored(logits, targets[rows]))
    return outputs(r, parts) if last else (requests, torch.cat(parts))


def sequences(contexts: torch.Tensor, continuations: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(ids, targets) [B, W] of context + continuation rows: position p is scored on the token at p + 1
    when that token is part of the continuation; PAD elsewhere."""
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
    return ids, targets


def generate(module, r: Requests) -> torch.Tensor:
    """Greedy continuations of every context, left-padded per chunk."""
    parts = []
    for rows in r.chunks:
        contexts = rq.trim(r.contexts[rows])
        a, width = rq.lengths(contexts), contexts.shape[1]
        left = torch.full_like(contexts, rq.PAD)
        for row in range(len(a)):
            n = int(a[row])
            left[row, width - n:] = contexts[row, :n]
        ids, mask = filled(left, pad_id(module))
        out = module.generate(input_ids=ids, attention_mask=mask, **greedy_settings(module, r.max_new))
        parts.append(generations(module, r, out[:, width:]))
    return outputs(r, parts)


ADAPTERS = (HFCausalLM(),)
