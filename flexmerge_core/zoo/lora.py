"""A PEFT LoRA adapter read as a dense fine-tuned checkpoint, one tensor at a time.

Why dense on demand: FlexMerge merges task vectors block by block; a LoRA task's vector of a target
weight is `scale * B @ A` (transposed for fan_in_fan_out layers and embeddings), scale = lora_alpha / r,
or lora_alpha / sqrt(r) with use_rslora (alpha and r per module from alpha_pattern / rank_pattern).
Computing it only when a block asks for it keeps one dense tensor per task in memory, never a whole
model; a tensor the adapter does not touch has a zero task vector that costs no read and no product.
Tensors saved whole in the adapter (modules_to_save, trained biases) replace the base tensor.
Files: `adapter_model.safetensors` with `adapter_config.json` beside it (what `save_pretrained` of a
PEFT model writes); DoRA, and adapter types other than LoRA, are refused by name.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

import torch

from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.checkpoint import CheckpointFile

CONFIG_NAME = "adapter_config.json"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")


def is_lora_adapter(path: Path) -> bool:
    """A safetensors file with a PEFT adapter_config.json beside it."""
    return path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file()


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override: the first pattern matching the end of the module path."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


class LoraCheckpoint:
    """The dense view (names, shapes, dtypes of `base`) of `base` + one LoRA adapter; reads like CheckpointFile."""

    def __init__(self, path: Path, role: str, base: CheckpointFile):
        self.path, self.role, self.base = Path(path), role, base
        config_path = self.path.parent / CONFIG_NAME
        self.config = self._read_config(config_path)
        self.adapter = CheckpointFile(self.path, role)
        self.files = self.adapter.files + [config_path]
        self.shapes, self.dtypes = base.shapes, base.dtypes
        self._lora: dict[str, tuple[str, str, float, bool]] = {}   # weight -> (A key, B key, scale, transpose)
        self._whole: dict[str, str] = {}                            # weight -> adapter key saved whole
        self._index()

    def _read_config(self, config_path: Path) -> dict:
        try:
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ZooError(f"{config_path}: not a PEFT adapter config of {self.role}: {exc}") from exc
        if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
            kind = config.get("peft_type") if isinstance(config, dict) else None
            raise ZooError(f"{config_path}: {self.role} is a {kind!r} adapter; only LoRA adapters are supported")
        if config.get("use_dora"):
            raise ZooError(f"{config_path}: {self.role} is a DoRA adapter (use_dora); only plain LoRA is supported")
        if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), (int, float)):
            raise ZooError(f"{config_path}: adapter config of {self.role} needs integer 'r' and number 'lora_alpha'")
        return config

    def _scale(self, module: str, rank: int) -> float:
        alpha = _pattern_value(self.config.get("alpha_pattern"), module, self.config["lora_alpha"])
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

    def _index(self) -> None:
        pairs: dict[str, dict[str, str]] = {}
        for key in self.adapter.names:
            name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
            match = _LORA_KEY.match(name)
            if match is None:
                self._whole[self._known(name, key)] = key
                continue
            pairs.setdefault(match["module"], {})[match["part"].split(".")[0][-1]] = key
        for module, parts in pairs.items():
            if set(parts) != {"A", "B"}:
                raise ZooError(f"{self.path}: LoRA module '{module}' of {self.role} lacks its "
                               f"lora_{'B' if 'A' in parts else 'A'} tensor")
            embedding = "embedding" in parts["A"]
            weight = self._known(f"{module}.weight", parts["A"])
            a, b = self.adapter.shapes[parts["A"]], self.adapter.shapes[parts["B"]]
            transpose = embedding or bool(self.config.get("fan_in_fan_out"))
            dense = (a[1], b[0]) if transpose else (b[0], a[1])
            if len(a) != 2 or len(b) != 2 or a[0] != b[1] or dense != self.shapes[weight]:
                raise ZooError(f"{self.path}: LoRA tensors of '{weight}' in {self.role} have shapes A {list(a)}, "
                               f"B {list(b)}; the base tensor is {list(self.shapes[weight])}")
            self._lora[weight] = (parts["A"], parts["B"], self._scale(module, a[0]), transpose)

    def _known(self, name: str, key: str) -> str:
        if name not in self.shapes:
            raise ZooError(f"{self.path}: tensor '{key}' of {self.role} adapts '{name}', which the pretrained "
                           f"model does not store (a tied alias or another architecture)")
        return name

    @property
    def names(self) -> list[str]:
        return self.base.names

    @property
    def reads(self) -> int:
        return self.adapter.reads

    @property
    def adapted(self) -> list[str]:
        """The base tensors this adapter changes (LoRA targets and whole replacements)."""
        return list(self._lora) + list(self._whole)

    def delta(self, name: str) -> Optional[torch.Tensor]:
        """float32 task vector of `name`: scale * B @ A for a LoRA target; None where the adapter changes nothing
        (whole replacements are not deltas: `read` them)."""
        if name not in self._lora:
            return None
        a_key, b_key, scale, transpose = self._lora[name]
        product = self.adapter.read(b_key).float() @ self.adapter.read(a_key).float()
        return (product.T if transpose else product) * scale

    def read(self, name: str) -> torch.Tensor:
        """The fine-tuned tensor: base + delta in the base dtype (as PEFT's merge_and_unload), a replacement,
        or the base tensor."""
        if name in self._whole:
            return self.adapter.read(self._whole[name])
        base = self.base.read(name)
        delta = self.delta(name)
        return base if delta is None else (base.float() + delta).to(base.dtype)

    def task_vector_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of `task_vector(name)`, computed from the matching rows of the factors."""
        if name in self._lora:
            a_key, b_key, scale, transpose = self._lora[name]
            a, b = self.adapter.read(a_key).float(), self.adapter.read(b_key).float()
            rows = (a.T[start:stop] @ b.T) if transpose else (b[start:stop] @ a)
            return rows * scale
        if name in self._whole:
            return (self.adapter.read_rows(self._whole[name], start, stop).float()
                    - self.base.read_rows(name, start, stop).float())
        return torch.zeros((stop - start, *self.shapes[name][1:]), dtype=torch.float32)

    def task_vector(self, name: str) -> torch.Tensor:
        """float32 fine-tuned minus pretrained, without reading the base where the adapter has a delta."""
        delta = self.delta(name)
        if delta is not None:
            return delta
        if name in self._whole:
            return self.adapter.read(self._whole[name]).float() - self.base.read(name).float()
        return torch.zeros(self.shapes[name], dtype=torch.float32)
