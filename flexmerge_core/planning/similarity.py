"""Per-block cosine similarity of task vectors (ALGORITHMS.md section 2), streamed one block at a time.

Why streamed: a zoo of 30 ViT-B-32 models is ~10 GB of task vectors; only one block's stack
[M, block numel] is ever in memory. Language models have single tensors of 100M+ values (a 7B
model's MLP matrices, its embeddings), so when similarity uses the raw task vectors, tensors whose
M vectors exceed STREAM_BYTES are read in row slabs instead (bit-identical result). Every pass reads
its stacks into one reused buffer (reused_buffer.py): on the 30-task fp16 ViT-B-32 zoo the raw pass
(bench_spectrum's floor) took 7.7 s of CPU against 16.0 s with new stacks and a concatenated block.
Precision: each column chunk's Gram is one float32 matrix product (fp32 inputs; half inputs are
promoted first) and the chunk results are summed in float64, so rounding never accumulates over a
whole block (relative error ~1e-7) while the products run at float32 speed (float64 GEMM is several
times slower on CPUs). Runs on CUDA when available.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from flexmerge_core.algorithms.base import OwnedBlock
from flexmerge_core.reused_buffer import ReusedBuffer

COSINE_EPS = 1e-8
GRAM_CHUNK_COLUMNS = 1 << 16
STREAM_BYTES = 64 << 20                # a tensor whose M task vectors take more (float32) is read in slabs
STREAM_SLAB = 64 * GRAM_CHUNK_COLUMNS  # values per slab: 4M, 16 MiB per task in float32

Progress = Callable[[int, int, str], None]


def pick_device(device=None) -> torch.device:
    """The requested device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _accumulate(gram: torch.Tensor, rows: torch.Tensor, device: torch.device) -> None:
    """gram += rows @ rows.T over [M, n] `rows`, one column chunk at a time (float32 products, float64 sum)."""
    for start in range(0, rows.shape[1], GRAM_CHUNK_COLUMNS):
        chunk = rows[:, start:start + GRAM_CHUNK_COLUMNS].to(device=device, dtype=torch.float32)
        gram += (chunk @ chunk.T).to(torch.float64)


def gram_matrix(vectors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """float64 [M, M] of dot products between the M rows, summed over every tensor of the block."""
    first = next(iter(vectors.values()))
    m = first.shape[0]
    gram = torch.zeros((m, m), dtype=torch.float64, device=device)
    for tensor in vectors.values():
        _accumulate(gram, tensor.reshape(m, -1), device)
    return gram


def _streamed_gram(zoo, names, device: torch.device, buffer: ReusedBuffer) -> torch.Tensor:
    """gram_matrix of the block's raw task vectors, each large tensor read in row slabs of STREAM_SLAB values.

    Slab edges fall on column-chunk edges of the flattened tensor and chunks are summed in the same
    order, so the result is bit-identical to gram_matrix over whole tensors while at most one slab of
    [M, STREAM_SLAB] float32 values (plus the rows read to cover it) is in memory: in `buffer`, the
    pass's one reused stack (reused_buffer.py).
    """
    m = len(zoo.task_names)
    gram = torch.zeros((m, m), dtype=torch.float64, device=device)
    for name in names:
        shape = zoo.param_shapes[name]
        numel = math.prod(shape)
        if m * numel * 4 <= STREAM_BYTES or len(shape) == 0:
            into = {name: buffer.view((m, *shape))}
            _accumulate(gram, zoo.task_vectors([name], into=into)[name].reshape(m, -1), device)
            continue
        width = numel // shape[0]
        for begin in range(0, numel, STREAM_SLAB):
            end = min(numel, begin + STREAM_SLAB)
            first, last = begin // width, -(-end // width)
            rows = zoo.task_vector_rows(name, first, last, into=buffer.view((m, last - first, *shape[1:])))
            _accumulate(gram, rows.reshape(m, -1)[:, begin - first * width:end - first * width], device)
    return gram


def cosine_from_gram(gram: torch.Tensor) -> np.ndarray:
    """a.b / (|a||b| + 1e-8): an all-zero vector gets similarity 0 with everything."""
    norms = torch.sqrt(torch.clamp(torch.diagonal(gram), min=0.0))
    return (gram / (norms[:, None] * norms[None, :] + COSINE_EPS)).cpu().numpy()


def block_stream(zoo, spec, device=None) -> Callable[[], Iterator[dict[str, torch.Tensor]]]:
    """stream() -> a fresh iterator over every block's stacked task vectors, in model order (on `device`,
    default where they are read), each an OwnedBlock (a pass may preprocess it in place). Each iterator
    reads into its own reused buffer: a block's tensors are overwritten when the next block is drawn
    (prepare passes consume a block before drawing the next)."""
    def stream():
        buffer = ReusedBuffer()
        for block in spec.blocks:
            yield OwnedBlock({n: t.to(device) for n, t in block_vectors(zoo, block, buffer).items()})
    return stream


def block_vectors(zoo, block, buffer: ReusedBuffer) -> dict[str, torch.Tensor]:
    """The block's stacked task vectors {name: [M, *shape]}, read into `buffer` (overwritten by its next use)."""
    m = len(zoo.task_names)
    return zoo.task_vectors(block.params, into=buffer.views({n: (m, *zoo.param_shapes[n]) for n in block.params}))


def _block_cosine(zoo, block, algorithm, device, buffer: ReusedBuffer) -> np.ndarray:
    """One block's M x M cosine matrix, its task vectors read into `buffer`."""
    if algorithm is None or algorithm.raw_similarity:
        return cosine_from_gram(_streamed_gram(zoo, block.params, device, buffer))
    vectors = algorithm.similarity_block(OwnedBlock(block_vectors(zoo, block, buffer)))
    return cosine_from_gram(gram_matrix(vectors, device))


def block_similarities(zoo, spec, algorithm=None, device=None,
                       progress: Optional[Progress] = None) -> np.ndarray:
    """float64 [B, M, M]: per block, the cosine similarity of the tasks' (preprocessed) block vectors."""
    device = pick_device(device)
    if algorithm is not None and algorithm.similarity_needs_prepare:
        algorithm.prepare_for(zoo.fingerprint, block_stream(zoo, spec))
    total = len(spec.blocks)
    out = np.empty((total, len(zoo.task_names), len(zoo.task_names)), dtype=np.float64)
    buffer = ReusedBuffer()   # one stack for the whole pass, freed when it ends
    for b, block in enumerate(spec.blocks):
        out[b] = _block_cosine(zoo, block, algorithm, device, buffer)
        if progress is not None:
            progress(b + 1, total, block.name)
    return out
