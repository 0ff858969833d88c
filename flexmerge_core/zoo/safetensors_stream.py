"""Writing a safetensors file piece by piece: the header first, then each tensor's bytes as they come.

Why: `safetensors.torch.save_file` needs every tensor in memory at once. Importers convert checkpoints
one tensor at a time and held-out images one batch at a time; with the shapes known up front the
header (names, dtypes, shapes, offsets) is written first and the data follows in declared order, so
memory stays at one tensor (or one batch of rows). The result is an ordinary safetensors file.
Exports merge block by block, which is not the file's order, so tensors may arrive in any order (each
is written at its own offset); with `save_file_order` and the same metadata the file is byte for byte
what `safetensors.torch.save_file` writes (its header is compact JSON, non-ASCII kept as UTF-8).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch

from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.checkpoint import SAFETENSORS_DTYPES

_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def save_file_order(layout: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> list[str]:
    """The names of `layout` in the order safetensors' own writer stores them (widest dtype first, then
    by name), asked from the library itself with empty stand-ins so a change of its rule is followed."""
    from safetensors.torch import save

    blob = save({name: torch.empty((0,), dtype=dtype) for name, (_, dtype) in layout.items()})
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    return [name for name in header if name != "__metadata__"]


class StreamedSafetensors:
    """`layout` = {name: (shape, dtype)} in file order; `write(name, rows)` appends rows of that tensor.

    Tensors may be filled in any order, each in one or several row chunks in row order. `metadata`
    ({str: str}) goes into the header as safetensors' `__metadata__`. `close` checks that every byte was
    written (a short file would otherwise look valid up to its first read).
    """

    def __init__(self, path: Path, layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: Optional[dict[str, str]] = None):
        self.path, self.layout = Path(path), layout
        header = {} if metadata is None else {"__metadata__": dict(metadata)}
        self._ranges, offset = {}, 0
        for name, (shape, dtype) in layout.items():
            size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._ranges[name] = (offset, offset + size)
            offset += size
        self._filled = dict.fromkeys(layout, 0)
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)   # data starts 8-byte aligned, as safetensors writes it
        self._data_start = 8 + len(text)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._file.write(len(text).to_bytes(8, "little") + text)

    def write(self, name: str, rows: torch.Tensor) -> None:
        if name not in self.layout:
            raise ZooError(f"{self.path}: tensor '{name}' is not in the declared layout")
        start, end = self._ranges[name]
        data = rows.detach().to("cpu", self.layout[name][1]).contiguous().view(torch.uint8).reshape(-1)
        position = start + self._filled[name]
        if position + data.numel() > end:
            raise ZooError(f"{self.path}: tensor '{name}' written beyond its declared shape")
        self._file.seek(self._data_start + position)
        self._file.write(memoryview(data.numpy()))
        self._filled[name] += data.numel()

    def close(self) -> None:
        self._file.close()
        short = [n for n, (s, e) in self._ranges.items() if self._filled[n] != e - s]
        if short:
            raise ZooError(f"{self.path}: tensor '{short[0]}' was not written completely")

    def __enter__(self) -> "StreamedSafetensors":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()
