"""What the Hugging Face language-model adapters share: config, build, requests, `from_pretrained` export.

The manifest's `config` is the model's `config.json` as a dict (it must name `model_type`); transformers
builds the model from it (`AutoConfig.for_model`), so any family transformers knows works without a
table here. Checkpoint keys are the model's own `state_dict()` keys, as `save_pretrained` writes them;
tied embeddings (T5's `shared` = encoder/decoder `embed_tokens` = `lm_head`; `tie_word_embeddings`) are
stored, counted and merged once under their first name, and the aliases follow it (base.tied_aliases).
Why the forward is its stages run in order: evaluation keeps stage inputs (e.g. T5's encoder output) and
re-runs only the stages after a change (evaluation/forward.py); one code path for both makes a staged score
equal a whole-forward one by construction. Every stage runs the same row chunks (rows whose logits fit
LOGITS_BUDGET), padded to the batch's widths, so kept values of different stages line up row for row.
Why forced offline: a zoo is a set of local files; nothing may try the network (HF_HUB_OFFLINE=1 is
set before transformers is first imported here, so its hub helpers never connect).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple, Optional

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
        """SCORE or GENERATE requests (lm_requests): the adapter's stages, in order."""
        split = self.stages(module)
        for stage in range(split.num_stages):
            inputs = split.run(inputs, stage)
        return inputs

    def native_files(self, config: dict, state: dict[str, torch.Tensor],
                     source: Path) -> dict[str, Callable[[Path], None]]:
        """A `from_pretrained` folder: config.json, model.safetensors (tied tensors once), tokenizer files.

        The vocabulary size is the input embedding's rows in `state`: a task that added tokens keeps them."""
        from safetensors.torch import save_file

        tensors = {n: t.detach().to("cpu").contiguous() for n, t in state.items()}
        hf = hf_config(self.kind, config)
        rows = tensors[self.embedding_name(config)].shape[0]
        if rows != hf.get_text_config().vocab_size:
            hf.get_text_config().vocab_size = rows
        files = {"config.json": hf.to_json_file,
                 "model.safetensors": lambda path: save_file(tensors, str(path), metadata={"format": "pt"})}
        for name in SIDE_FILES:
            if (Path(source) / name).is_file():
                files[name] = lambda path, name=name: shutil.copyfile(Path(source) / name, path)
        return files

    def embedding_name(self, config: dict) -> str:
        """The stored name of the input embedding's weight (built on `meta`: no memory)."""
        with torch.device("meta"):
            module = self.build(config)
        weight = module.get_input_embeddings().weight
        return next(n for n, t in module.state_dict(keep_vars=True).items() if t is weight)


class Requests(NamedTuple):
    """A request tensor unpacked (lm_requests.unpack) with the row chunks every stage runs."""
    tensor: torch.Tensor
    mode: int
    max_new: int
    contexts: torch.Tensor
    continuations: torch.Tensor
    chunks: list[slice]


def read_requests(module, requests: torch.Tensor) -> Requests:
    """The requests and their row chunks, each chunk's logits within LOGITS_BUDGET."""
    mode, max_new, contexts, continuations = rq.unpack(requests)
    if mode not in (rq.SCORE, rq.GENERATE):
        raise ValueError(f"unknown language-model request mode {mode}")
    width = contexts.shape[1] + continuations.shape[1] + max_new + 1
    step = max(1, LOGITS_BUDGET // (width * module.config.get_text_config().vocab_size))
    chunks = [slice(start, start + step) for start in range(0, len(contexts), step)]
    return Requests(requests, mode, max_new, contexts, continuations, chunks)


def outputs(requests: Requests, parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-chunk outputs -> [N, C, ...] in the layout of the request tensor (lm_requests)."""
    shape = requests.tensor.shape
    return torch.cat(parts).reshape(shape[0], shape[1], *parts[0].shape[1:])


def generations(module, requests: Requests, generated: torch.Tensor) -> torch.Tensor:
    """generate()'s new ids of one chunk -> lm_requests' GENERATE output rows."""
    return rq.cut_generations(generated, _eos_ids(module), requests.max_new)


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
