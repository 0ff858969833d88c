"""Shared machinery of the merge algorithms: declared hyperparameters, the result type, the interface.

Why one base class: every algorithm must validate its options the same way (one-line
InvalidArgumentError naming the option), expose a stable `key` for memos and caches, and answer the
same questions (storage family, preprocessing, which group sizes it merges) so the plan, the merger
and the app never special-case an algorithm by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch

from flexmerge_core.cache import content_hash
from flexmerge_core.errors import InvalidArgumentError

Block = Mapping[str, torch.Tensor]
BlockStream = Callable[[], Iterator[Block]]   # a block's tensors may be overwritten when the next is drawn
RAW_ROWS = content_hash("rows", "raw")  # preprocessing_key of the task vectors as they are (in fp32 or better)


@dataclass(frozen=True)
class HyperParam:
    """One declared option: its default and what is valid (a numeric range or a set of choices)."""

    name: str
    default: Any
    kind: type  # float, int or str
    low: Optional[float] = None
    high: Optional[float] = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: Optional[tuple] = None
    help: str = ""

    def validate(self, value: Any) -> Any:
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise InvalidArgumentError(
                    f"option {self.name!r} must be one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgumentError(
                f"option {self.name!r} must be a {self.kind.__name__}, got {value!r}")
        if self.kind is int and (not float(value).is_integer()):
            raise InvalidArgumentError(f"option {self.name!r} must be an integer, got {value!r}")
        value = self.kind(value)
        if not math.isfinite(value):
            raise InvalidArgumentError(f"option {self.name!r} must be finite, got {value!r}")
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            raise InvalidArgumentError(f"option {self.name!r}={value} is out of range {self.range_text()}")
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            raise InvalidArgumentError(f"option {self.name!r}={value} is out of range {self.range_text()}")
        return value

    def parse(self, text: str) -> Any:
        """A command-line value ('0.3', '5', 'mean') read as this option's kind, then validated."""
        if self.kind is not str:
            try:
                value = float(text) if self.kind is float else int(text)
            except ValueError:
                raise InvalidArgumentError(f"option {self.name!r} must be a {self.kind.__name__}, got {text!r}") from None
            return self.validate(value)
        return self.validate(text)

    def range_text(self) -> str:
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        return f"{left}{self.low}, {self.high}{right}"


@dataclass
class MergeResult:
    """A group's stored result.

    unified: {name: merged task vector} (None for a group the algorithm does not merge).
    masks/scales: mask methods only ({name: bool [g, *shape]}, float [g]).
    members: the group's task ids, ascending (reconstruct finds a member's row by it).
    originals: for a group the algorithm does not merge (a singleton; a mask-method group of <= 2),
    the members' own task vectors {name: [g, *shape]}, stored as they are.
    """

    unified: Optional[dict]
    masks: Optional[dict] = None
    scales: Optional[torch.Tensor] = None
    members: tuple = ()
    originals: Optional[dict] = None

    @property
    def merged(self) -> bool:
        return self.originals is None


class OwnedBlock(dict):
    """A block whose tensors nothing else references (read afresh for its receiver, or just computed):
    the receiver may overwrite them and return them. DARE's drop and TIES' trim then work in place: the
    first touch of new memory costs more than their arithmetic (a page fault per 4 KiB page: trimming a
    [30, 3072, 768] block into new memory took 0.24-0.32 s, in place 0.07-0.14 s). Any other Mapping is
    never written to."""


def float_block(block: Block) -> dict:
    """The block's tensors in fp32 or better (half inputs are promoted; float64 stays float64); an
    OwnedBlock stays one."""
    out = OwnedBlock() if isinstance(block, OwnedBlock) else {}
    for name, t in block.items():
        out[name] = t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)
    return out


def flatten_rows(block: Block) -> torch.Tensor:
    """[g, d]: each member's tensors flattened and concatenated in the block's name order."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in block.values()], dim=1)


def unflatten_row(vector: torch.Tensor, like: Block) -> dict:
    """Inverse of flatten_rows for one row: {name: Tensor[*shape]} shaped like `like`'s members."""
    out, start = {}, 0
    for name, t in like.items():
        size = t[0].numel()
        out[name] = vector[start:start + size].reshape(t.shape[1:])
        start += size
    return out


def group_size(block: Block) -> int:
    sizes = {t.shape[0] for t in block.values()}
    if len(sizes) != 1:
        raise InvalidArgumentError(f"block tensors disagree on the number of members: {sorted(sizes)}")
    return sizes.pop()


class MergeAlgorithm:
    """Base of every algorithm. Subclasses set `name`, `params`, and implement `_merge`."""

    name: str = ""
    storage: str = "standard"  # "standard" | "mask"
    params: tuple = ()
    # True when preprocessing and merging a block is doing so to each of its tensors alone, and a NaN/Inf in
    # any input makes the merged tensor non-finite (sums, means): a one-pass reader may then merge a block
    # tensor by tensor and check only the result for NaN/Inf (deployment/tensorwise.py), with the same values
    tensorwise: bool = False
    # bumped when the code changes this algorithm's merged values (even in the last bit): disk caches of merged
    # groups are keyed by `key`, so an upgrade never serves results of the old code as its own
    results_version: int = 0
    # Set when the unified vector is a scaled copy of a basis: a module-level function of the preprocessed
    # group alone (the mean, TIES' disjoint mean), times the option named by `basis_scale` (None: as it is).
    # Algorithms with equal `basis_key` then share a group's basis (deployment/group_bases.py), so comparing
    # ta with consensus_ta computes each group's mean once. None (pcb, tsv, emr): nothing to share.
    basis: Optional[Callable[[dict], dict]] = None
    basis_scale: Optional[str] = None

    def __init__(self, **overrides: Any):
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise InvalidArgumentError(
                f"algorithm {self.name!r} has no option {unknown[0]!r} (options: {sorted(declared)})")
        self._hp = {p.name: p.validate(overrides.get(p.name, p.default)) for p in self.params}
        self._prepared_on: Optional[str] = None

    # ---- identity -------------------------------------------------------------------------
    @property
    def hyperparameters(self) -> dict:
        return dict(self._hp)

    @property
    def key(self) -> str:
        """Stable hash of name + hyperparameters (+ results_version once bumped): memo and cache key, never
        Python's hash()."""
        version = (self.results_version,) if self.results_version else ()
        return content_hash("algorithm", self.name, self._hp, *version)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self._hp})"

    # ---- preprocessing ----------------------------------------------------------------------
    @property
    def has_preprocessing(self) -> bool:
        """True when `prepare` must see the whole model before `preprocess_block`/`merge`."""
        return False

    @property
    def similarity_needs_prepare(self) -> bool:
        """True when `similarity_block` depends on prepared (global) state."""
        return self.has_preprocessing

    @property
    def raw_similarity(self) -> bool:
        """True when similarity is computed on the task vectors as they are (no per-block or global
        preprocessing), so planning may stream a tensor's vectors in slices instead of whole blocks."""
        cls, base = type(self), MergeAlgorithm
        return (not self.has_preprocessing and cls.similarity_block is base.similarity_block
                and self.preprocessing_key == RAW_ROWS)

    @property
    def input_key(self) -> str:
        """Stable hash of what the rows of `_input_vectors` depend on besides the zoo (RAW_ROWS unless
        overridden; an override that names nothing is keyed by this algorithm's own `key`)."""
        if type(self)._input_vectors is MergeAlgorithm._input_vectors:
            return RAW_ROWS
        return content_hash("rows", "inputs", self.key)

    @property
    def preprocessing_key(self) -> str:
        """Stable hash of what a task's rows of `preprocess_block` depend on besides the zoo, block and
        task: algorithms with equal keys share preprocessed rows (deployment/prepared_rows.py), whatever
        their merge. `input_key` when preprocessing stops at the input stage; an override of
        preprocess_block or preprocess_inputs that does not name its own key is keyed by `key`
        (shared by no other algorithm)."""
        cls, base = type(self), MergeAlgorithm
        if cls.preprocess_block is base.preprocess_block and cls.preprocess_inputs is base.preprocess_inputs:
            return self.input_key
        return content_hash("rows", "preprocessed", self.key)

    @property
    def basis_key(self) -> Optional[str]:
        """Stable hash of what a merged group's basis depends on besides the zoo, block and members: the
        basis function (by its qualified name) and the rows it reads (preprocessing_key); None without one.
        ta, consensus_ta and avg share the mean of the raw rows; consensus the disjoint mean of the raw rows,
        ties that of its trimmed rows (a different key); dare_ta's mean is of its dropped rows."""
        if not self._scales_basis:
            return None
        function = type(self).basis
        return content_hash("basis", f"{function.__module__}.{function.__qualname__}", self.preprocessing_key)

    @property
    def _scales_basis(self) -> bool:
        """True when the unified vector is the basis scaled: one is declared and `_merge` is not overridden
        (a subclass's own _merge wins, and shares nothing)."""
        return self.basis is not None and type(self)._merge is MergeAlgorithm._merge

    @property
    def staged_preprocessing(self) -> bool:
        """True when preprocess_block is preprocess_inputs after _input_vectors, so rows keyed by
        `input_key` (another algorithm's, e.g. dare_ta's dropped rows for dare_ties) may be finished here."""
        return type(self).preprocess_block is MergeAlgorithm.preprocess_block

    def row_bytes(self, shapes: Sequence[tuple]) -> int:
        """Bytes of one task's preprocessed rows of a block whose tensors have these shapes (float32
        vectors unless overridden): what row caches reserve and budget for it."""
        return 4 * sum(math.prod(shape) for shape in shapes)

    def prepare(self, stream: BlockStream) -> None:
        """Record global state from the whole model; stream() gives a fresh block iterator (whose blocks share
        memory: keep what is computed from a block, not its tensors)."""

    def prepare_for(self, source: str, stream: BlockStream) -> None:
        """prepare(stream) unless the last prepare_for named the same `source` (a zoo fingerprint):
        the plan's similarity pass and the merger then share one global pass (TIES' thresholds:
        ~40% of a ViT-B-32 spectrum's time when run twice). Prepared state never depends on how the
        stream cuts the model into blocks, so any block spec of that zoo gives the same state."""
        if self._prepared_on != source:
            self._prepared_on = None
            self.prepare(stream)
            self._prepared_on = source

    def preprocess_block(self, block: Block, tasks: Optional[Sequence[int]] = None) -> dict:
        """The block's vectors as the merge expects them: preprocess_inputs over _input_vectors.

        Row-wise: row t of every output depends only on task t (and prepared state), so rows of a
        task can be computed once and reused by every group it joins; outputs are {key: [g, ...]},
        keys need not be parameter names."""
        return self.preprocess_inputs(self._input_vectors(block, tasks), tasks)

    def preprocess_inputs(self, inputs: Block, tasks: Optional[Sequence[int]] = None) -> dict:
        """The preprocessing after the input stage (TIES' trim); identity unless overridden."""
        return dict(inputs)

    def _input_vectors(self, block: Block, tasks: Optional[Sequence[int]]) -> dict:
        """Hook for stateless per-task preprocessing that comes first (DARE overrides it)."""
        return float_block(block)

    def similarity_block(self, block: Block, tasks: Optional[Sequence[int]] = None) -> dict:
        """The vectors similarity is computed on (by default the preprocessed ones)."""
        return self.preprocess_block(block, tasks)

    def preprocess(self, task_vectors: Block) -> dict:
        """The whole-model interface of docs/ARCHITECTURE.md: prepare on one chunk, then preprocess it."""
        self._prepared_on = None
        self.prepare(lambda: iter([task_vectors]))
        return self.preprocess_block(task_vectors)

    # ---- merging ----------------------------------------------------------------------------
    def merges_group(self, size: int) -> bool:
        """Whether a group of this size is merged (else it keeps its members' own vectors)."""
        return size >= (3 if self.storage == "mask" else 2)

    def merge(self, block: Block, members: Sequence[int], basis: Optional[dict] = None) -> MergeResult:
        """The group's stored result. basis: the group's `group_basis` when already known (another algorithm
        with the same basis_key computed it); it is read, never changed. None: computed here."""
        members = tuple(int(m) for m in members)
        block = float_block(block)
        g = group_size(block)
        if g != len(members) or list(members) != sorted(set(members)):
            raise InvalidArgumentError(
                f"members {list(members)} must be {g} distinct ascending task ids matching the block rows")
        if not self.merges_group(g):
            return MergeResult(unified=None, members=members, originals=dict(block))
        if not self._scales_basis:
            if basis is not None:
                raise InvalidArgumentError(f"algorithm {self.name!r} has no basis to be handed")
            result = self._merge(block, members)
        else:
            result = self._stored(block, members, self._scaled(block, basis))
        result.members = members
        return result

    def group_basis(self, block: Block) -> dict:
        """The basis of a merged group's preprocessed block, exactly as `merge` computes it."""
        return type(self).basis(float_block(block))

    def _scaled(self, block: dict, basis: Optional[dict]) -> dict:
        """The unified vector: the basis times its scale. A basis computed here (basis None) is scaled in
        place; a handed one is left intact (a new tensor, the same products: multiplication commutes)."""
        own = basis is None
        if own:
            basis = type(self).basis(block)
        scale = None if self.basis_scale is None else self._hp[self.basis_scale]
        if scale is None or scale == 1.0:  # x * 1.0 is x, bit for bit: no pass over the vector
            return basis if own else {n: v.clone() for n, v in basis.items()}
        return {n: v.mul_(scale) if own else v * scale for n, v in basis.items()}

    def _merge(self, block: dict, members: tuple) -> MergeResult:
        """The stored result of an algorithm without a basis (or overriding its basis' merge)."""
        raise NotImplementedError

    def _stored(self, block: dict, members: tuple, unified: dict) -> MergeResult:
        """The stored result around a basis algorithm's unified vector: the vector alone, unless
        overridden (consensus adds its masks, which read the block)."""
        return MergeResult(unified=unified)

    def reconstruct(self, result: MergeResult, member: int) -> dict:
        """That member's task vector from the stored result (add theta_pre yourself)."""
        if member not in result.members:
            raise InvalidArgumentError(f"task {member} is not a member of group {list(result.members)}")
        row = result.members.index(member)
        if result.originals is not None:
            return {n: t[row] for n, t in result.originals.items()}
        if result.masks is None:
            return dict(result.unified)
        scale = result.scales[row] if result.scales is not None else 1.0
        return {n: scale * result.masks[n][row].to(u.dtype) * u for n, u in result.unified.items()}


def iter_rows(tasks: Optional[Sequence[int]], rows: int) -> Iterable[int]:
    """The task ids of a block's rows (all tasks 0..rows-1 when not given)."""
    if tasks is None:
        return range(rows)
    tasks = [int(t) for t in tasks]
    if len(tasks) != rows:
        raise InvalidArgumentError(f"{len(tasks)} task ids given for a block of {rows} rows")
    return tasks
