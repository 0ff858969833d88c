"""Per-block cosine similarity of task vectors (ALGORITHMS.md section 2), streamed one block at a time.

Why streamed: a zoo of 30 ViT-B-32 models is ~10 GB of task vectors; only one block's stack
[M, block numel] is ever in memory. Precision: each column chunk's Gram is one float32 matrix product
(fp32 inputs; half inputs are promoted first) and the chunk results are summed in float64, so rounding
never accumulates over a whole block (relative error ~1e-7) while the products run at float32 speed
(float64 GEMM is several times slower on CPUs). Runs on CUDA when available.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch

COSINE_EPS = 1e-8
GRAM_CHUNK_COLUMNS = 1 << 16

Progress = Callable[[int, int, str], None]


def pick_device(device=None) -> torch.device:
    """The requested device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gram_matrix(vectors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """float64 [M, M] of dot products between the M rows, summed over every tensor of the block."""
    first = next(iter(vectors.values()))
    m = first.shape[0]
    gram = torch.zeros((m, m), dtype=torch.float64, device=device)
    for tensor in vectors.values():
        rows = tensor.reshape(m, -1)
        for start in range(0, rows.shape[1], GRAM_CHUNK_COLUMNS):
            chunk = rows[:, start:start + GRAM_CHUNK_COLUMNS].to(device=device, dtype=torch.float32)
            gram += (chunk @ chunk.T).to(torch.float64)
    return gram


def cosine_from_gram(gram: torch.Tensor) -> np.ndarray:
    """a.b / (|a||b| + 1e-8): an all-zero vector gets similarity 0 with everything."""
    norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0.0))
    return (gram / (norms[:, None] * norms[None, :] + COSINE_EPS)).cpu().numpy()


def block_stream(zoo, spec) -> Callable[[], Iterator[dict[str, torch.Tensor]]]:
    """stream() -> a fresh iterator over every block's stacked task vectors, in model order."""
    def stream():
        for block in spec.blocks:
            yield zoo.task_vectors(block.params)
    return stream


def _block_cosine(zoo, block, algorithm, device) -> np.ndarray:
    """One block's M x M cosine matrix; its task vectors are freed when this returns."""
    vectors = zoo.task_vectors(block.params)
    if algorithm is not None:
        vectors = algorithm.similarity_block(vectors)
    return cosine_from_gram(gram_matrix(vectors, device))


def block_similarities(zoo, spec, algorithm=None, device=None,
                       progress: Optional[Progress] = None) -> np.ndarray:
    """float64 [B, M, M]: per block, the cosine similarity of the tasks' (preprocessed) block vectors."""
    device = pick_device(device)
    if algorithm is not None and algorithm.similarity_needs_prepare:
        algorithm.prepare(block_stream(zoo, spec))
    total = len(spec.blocks)
    out = np.empty((total, len(zoo.task_names), len(zoo.task_names)), dtype=np.float64)
    for b, block in enumerate(spec.blocks):
        out[b] = _block_cosine(zoo, block, algorithm, device)
        if progress is not None:
            progress(b + 1, total, block.name)
    return out
