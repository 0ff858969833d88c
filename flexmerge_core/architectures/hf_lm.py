"""What the Hugging Face language-model adapters share: config, build, requests, `from_pretrained` export.

The manifest's `config` is the model's `config.json` as a dict (it must name `model_type`); transformers
builds the model from it (`AutoConfig.for_model`), so any family transformers knows works without a
table here. Checkpoint keys are the model's own `state_dict()` keys, as `save_pretrained` writes them;
tied embeddings (T5's `shared` = encoder/decoder `embed_tokens` = `lm_head`; `tie_word_embeddings`) are
stored, counted and merged once under their first name, and the aliases follow it (base.tied_aliases).
Why forced offline: a zoo is a set of local files; nothing may try the network (HF_HUB_OFFLINE=1 is
set before transformers is first imported here, so its hub helpers never connect).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from flexmerge_core.architectures import lm_requests as rq
from flexmerge_core.architectures.base import ArchitectureAdapter
from flexmerge_core.errors import ZooError


def force_offline() -> None:
    """No hub access, ever: set before transformers / huggingface_hub read their settings at import."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


force_offline()

_NOT_CONFIG = ("transformers_version", "_name_or_path")
LOGITS_BUDGET = 1 << 27   # float32 logits per forward chunk (512 MiB): bounds memory whatever the batch size
# files beside a model's weights that from_pretrained (model and tokenizer) reads
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
              "generation_config.json", "chat_template.jinja", "chat_template.json")


def hf_config(kind: str, config: dict):
    """The transformers config object of a manifest config (ZooError naming what is wrong)."""
    from transformers import AutoConfig

    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        found = ", ".join(sorted(config)) if isinstance(config, dict) else repr(config)
        raise ZooError(f"zoo.json: architecture '{kind}' needs its model's config.json as config "
                       f"(with 'model_type'), got {found}")
    values = {k: v for k, v in config.items() if k not in _NOT_CONFIG and k != "model_type"}
    try:
        return AutoConfig.for_model(config["model_type"], **values)
    except (ValueError, KeyError, TypeError) as exc:
        raise ZooError(f"zoo.json: architecture '{kind}': transformers cannot build model_type "
                       f"'{config['model_type']}': {' '.join(str(exc).split())[:200]}") from exc


class HFLanguageModel(ArchitectureAdapter):
    """A transformers model class (`auto_class`) from a config.json dict; `forward` answers lm_requests."""

    auto_class = ""
    native_export = True

    def check_config(self, config: dict) -> dict:
        hf_config(self.kind, config)
        return config

    def build(self, config: dict) -> torch.nn.Module:
        import transformers

        model = getattr(transformers, self.auto_class).from_config(hf_config(self.kind, config))
        return model.eval()

    def forward(self, module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """SCORE or GENERATE requests (lm_requests), run in row chunks whose logits fit LOGITS_BUDGET."""
        mode, max_new, contexts, continuations = rq.unpack(inputs)
        if mode not in (rq.SCORE, rq.GENERATE):
            raise ValueError(f"unknown language-model request mode {mode}")
        width = contexts.shape[1] + continuations.shape[1] + max_new + 1
        step = max(1, LOGITS_BUDGET // (width * module.config.get_text_config().vocab_size))
        parts = []
        for start in range(0, len(contexts), step):
            ctx, cont = rq.trim(contexts[start:start + step]), rq.trim(continuations[start:start + step])
            if mode == rq.SCORE:
                parts.append(rq.scored(*self.continuation_logits(module, ctx, cont)))
            else:
                parts.append(rq.cut_generations(self.generate(module, ctx, max_new), _eos_ids(module), max_new))
        return torch.cat(parts).reshape(inputs.shape[0], inputs.shape[1], *parts[0].shape[1:])

    def continuation_logits(self, module, contexts: torch.Tensor,
                            continuations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, L, V], targets [B, L]): the token each position is scored on, PAD where none."""
        raise NotImplementedError

    def generate(self, module, contexts: torch.Tensor, max_new: int) -> torch.Tensor:
        """[B, T] greedy continuation ids of each context (T <= max_new)."""
        raise NotImplementedError

    def native_files(self, config: dict, state: dict[str, torch.Tensor],
                     source: Path) -> dict[str, Callable[[Path], None]]:
        """A `from_pretrained` folder: config.json, model.safetensors (tied tensors once), tokenizer files."""
        from safetensors.torch import save_file

        tensors = {n: t.detach().to("cpu").contiguous() for n, t in state.items()}
        files = {"config.json": hf_config(self.kind, config).to_json_file,
                 "model.safetensors": lambda path: save_file(tensors, str(path), metadata={"format": "pt"})}
        for name in SIDE_FILES:
            if (Path(source) / name).is_file():
                files[name] = lambda path, name=name: shutil.copyfile(Path(source) / name, path)
        return files

def pad_id(module) -> int:
    """The model's padding token (else its end-of-sequence token, else 0): what PAD positions are fed as."""
    config = module.config
    for value in (config.pad_token_id, _first(config.eos_token_id)):
        if isinstance(value, int) and value >= 0:
            return value
    return 0


def _first(value) -> Optional[int]:
    return value[0] if isinstance(value, (list, tuple)) and value else value


def _eos_ids(module) -> set[int]:
    eos = module.config.eos_token_id
    eos = eos if isinstance(eos, (list, tuple)) else [eos]
    return {int(e) for e in eos if isinstance(e, int)}


def filled(rows: torch.Tensor, value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with PAD replaced by `value`, attention mask) of right-padded rows."""
    mask = rows != rq.PAD
    return rows.masked_fill(~mask, value), mask.long()


def greedy_settings(module, max_new: int) -> dict:
    """generate() arguments for plain greedy decoding, whatever the model's generation_config says."""
    eos = sorted(_eos_ids(module))
    return {"max_new_tokens": max_new, "do_sample": False, "num_beams": 1, "pad_token_id": pad_id(module),
            "eos_token_id": eos or None}
