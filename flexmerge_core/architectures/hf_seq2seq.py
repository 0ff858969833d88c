"""Encoder-decoder language models (T5, flan-T5, mT5, ...): the kind `hf_seq2seq`.

config = the model's config.json as a dict (`model_type` "t5", "mt5", ...; AutoModelForSeq2SeqLM).
A (context, continuation) request feeds the context to the encoder and the continuation, followed by
the end-of-sequence token (as the model was trained to emit), as decoder targets; every target token
is scored, the end-of-sequence one included. Generation is transformers' greedy `generate`.
"""
from __future__ import annotations

import torch

from flexmerge_core.architectures import lm_requests as rq
from flexmerge_core.architectures.hf_lm import HFLanguageModel, filled, greedy_settings, pad_id


class HFSeq2Seq(HFLanguageModel):
    kind = "hf_seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"

    def continuation_logits(self, module, contexts: torch.Tensor,
                            continuations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder position t is scored on target t: the continuation, then end-of-sequence."""
        targets = with_eos(continuations, module.config.eos_token_id)
        ids, mask = filled(contexts, pad_id(module))
        decoder_ids = module.prepare_decoder_input_ids_from_labels(labels=targets.masked_fill(targets == rq.PAD, -100))
        return module(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits, targets

    def generate(self, module, contexts: torch.Tensor, max_new: int) -> torch.Tensor:
        ids, mask = filled(contexts, pad_id(module))
        out = module.generate(input_ids=ids, attention_mask=mask, **greedy_settings(module, max_new))
        return out[:, 1:]   # drop the decoder start token


def with_eos(continuations: torch.Tensor, eos: int) -> torch.Tensor:
    """Right-padded rows with `eos` appended after each row's last token."""
    out = torch.cat([continuations, torch.full_like(continuations[:, :1], rq.PAD)], dim=1)
    out[torch.arange(len(out), device=out.device), rq.lengths(continuations)] = eos
    return out


ADAPTERS = (HFSeq2Seq(),)
