"""Writing a safetensors file piece by piece: the header first, then each tensor's bytes as they come.

Why: `safetensors.torch.save_file` needs every tensor in memory at once. Importers convert checkpoints
one tensor at a time and held-out images one batch at a time; with the shapes known up front the
header (names, dtypes, shapes, offsets) is written first and the data follows in declared order, so
memory stays at one tensor (or one batch of rows). The result is an ordinary safetensors file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.checkpoint import SAFETENSORS_DTYPES

_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


class StreamedSafetensors:
    """`layout` = {name: (shape, dtype)} in file order; `write(name, rows)` appends rows of that tensor.

    Tensors are filled in layout order; a tensor may arrive in several row chunks. `close` checks that
    every byte was written (a short file would otherwise look valid up to its first read).
    """

    def __init__(self, path: Path, layout: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.path, self.layout = Path(path), layout
        header, self._ranges, offset = {}, {}, 0
        for name, (shape, dtype) in layout.items():
            size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._ranges[name] = (offset, offset + size)
            offset += size
        self._total, self._position = offset, 0
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)   # data starts 8-byte aligned, as safetensors writes it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._file.write(len(text).to_bytes(8, "little") + text)

    def write(self, name: str, rows: torch.Tensor) -> None:
        start, end = self._ranges.get(name, (-1, -1))
        data = rows.detach().to("cpu", self.layout[name][1]) if name in self.layout else rows
        data = data.contiguous().view(torch.uint8).reshape(-1)
        if not start <= self._position < end or self._position + data.numel() > end:
            raise ZooError(f"{self.path}: tensor '{name}' written out of order or beyond its declared shape")
        self._file.write(data.numpy().tobytes())
        self._position += data.numel()

    def close(self) -> None:
        self._file.close()
        if self._position != self._total:
            short = next(n for n, (s, e) in self._ranges.items() if s <= self._position < e)
            raise ZooError(f"{self.path}: tensor '{short}' was not written completely")

    def __enter__(self) -> "StreamedSafetensors":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()
