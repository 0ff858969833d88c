"""Encoder-decoder language models (T5, flan-T5, mT5, ...): the kind `hf_seq2seq`.

config = the model's config.json as a dict (`model_type` "t5", "mt5", ...; AutoModelForSeq2SeqLM).
A (context, continuation) request feeds the context to the encoder and the continuation, followed by
the end-of-sequence token (as the model was trained to emit), as decoder targets; every target token
is scored, the end-of-sequence one included. Generation is transformers' greedy `generate`.
Two stages: the encoder (input embeddings, encoder blocks, final encoder norm), then the decoder with the
output head, fed the kept encoder output; a curve step that changes only decoder blocks re-runs the decoder
alone, for scoring and generation alike. The stacks are not cut per block: T5 blocks share the relative
position bias that the first block computes, so a block cannot run without the ones before it.
"""
from __future__ import annotations

import torch

from flexmerge_core.architectures import lm_requests as rq
from flexmerge_core.architectures.base import StageSplit
from flexmerge_core.architectures.hf_lm import (HFLanguageModel, filled, generations, greedy_settings, outputs,
                                                pad_id, read_requests)


class HFSeq2Seq(HFLanguageModel):
    kind = "hf_seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"

    def stages(self, module) -> StageSplit:
        """Stage 0 reads the encoder and the input embedding (shared with the decoder: a change re-runs both)."""
        encoder = next(n for n, m in module.named_modules() if m is module.get_encoder()) + "."
        embedding = module.get_input_embeddings().weight
        first = {n for n, t in module.state_dict(keep_vars=True).items() if t is embedding or n.startswith(encoder)}
        return StageSplit(num_stages=2, stage_of=lambda name: 0 if name in first else 1,
                          run=lambda x, stage: encode(module, x) if stage == 0 else decode(module, *x))


def encode(module, requests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(requests, encoder output [rows, context width, d]) of every request row."""
    r = read_requests(module, requests)
    ids, mask = filled(r.contexts, pad_id(module))
    encoder = module.get_encoder()
    return requests, torch.cat([encoder(input_ids=ids[rows], attention_mask=mask[rows]).last_hidden_state
                                for rows in r.chunks])


def decode(module, requests: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Decoder position t is scored on target t (the continuation, then end-of-sequence); or greedy generation."""
    from transformers.modeling_outputs import BaseModelOutput

    r = read_requests(module, requests)
    _, mask = filled(r.contexts, pad_id(module))
    parts = []
    for rows in r.chunks:
        encoded = BaseModelOutput(last_hidden_state=hidden[rows])
        if r.mode == rq.SCORE:
            targets = with_eos(rq.trim(r.continuations[rows]), module.config.eos_token_id)
            decoder_ids = module.prepare_decoder_input_ids_from_labels(
                labels=targets.masked_fill(targets == rq.PAD, -100))
            logits = module(encoder_outputs=encoded, attention_mask=mask[rows], decoder_input_ids=decoder_ids).logits
            parts.append(rq.scored(logits, targets))
        else:
            out = module.generate(encoder_outputs=encoded, attention_mask=mask[rows],
                                  **greedy_settings(module, r.max_new))
            parts.append(generations(module, r, out[:, 1:]))   # without the decoder start token
    return outputs(r, parts)


def with_eos(continuations: torch.Tensor, eos: int) -> torch.Tensor:
    """Right-padded rows with `eos` appended after each row's last token."""
    out = torch.cat([continuations, torch.full_like(continuations[:, :1], rq.PAD)], dim=1)
    out[torch.arange(len(out), device=out.device), rq.lengths(continuations)] = eos
    return out


ADAPTERS = (HFSeq2Seq(),)
