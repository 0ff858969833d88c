"""Held-out data from HuggingFace datasets on disk: parquet files and `save_to_disk` folders.

Why read the files with pyarrow: a dataset is an image column (the `Image` feature: a struct of
encoded `bytes` and a `path`) and a label column (a `ClassLabel`, whose names become the task's
classes); both formats are Arrow tables that can be read a batch at a time, so images are decoded,
preprocessed and written to the zoo's data file one batch at a time and memory stays bounded by
a batch, whatever the split's size. The `datasets` library is not needed to read them.
Layouts (`path`, relative to the spec, or a dataset id in the hub cache):
  - a `.parquet` file, or a folder of them (the split picked by file name: `test-00000-of-00001.parquet`,
    `data/test-*.parquet`, or a `test/` sub-folder);
  - a `save_to_disk` folder: `state.json` + `dataset_info.json` + `data-*.arrow` (a Dataset), or
    `dataset_dict.json` with one such folder per split (a DatasetDict).
Class names come from the features (`dataset_info.json`, or the parquet schema's "huggingface"
metadata). `max_examples` keeps a seeded random subset (the same for the same seed), in file order.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from PIL import Image

from flexmerge_core.errors import ZooError
from flexmerge_core.zoo.safetensors_stream import StreamedSafetensors
from flexmerge_core.zoo.writer import FileSource

BATCH_ROWS = 64


def is_hf_dataset(path: Path) -> bool:
    """True for what this module reads (a parquet file or folder, a save_to_disk folder)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
                              or any(path.rglob("*.parquet")))


def _split_files(folder: Path, split: str) -> list[Path]:
    files = sorted(folder.rglob("*.parquet"))
    chosen = [f for f in files if f.name.startswith(f"{split}-") or f.name == f"{split}.parquet"
              or split in f.relative_to(folder).parts[:-1]]
    if not chosen:
        splits = sorted({f.name.split("-")[0].split(".")[0] for f in files})
        raise ZooError(f"{folder}: no parquet files of split '{split}' (found files for: {', '.join(splits)})")
    return chosen


def _save_to_disk_files(folder: Path, split: str) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise ZooError(f"{folder}: no split '{split}' (dataset_dict.json lists {', '.join(splits)})")
        folder = folder / split
    state = folder / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ZooError(f"{state}: not a datasets save_to_disk state file ({exc})") from exc
    missing = [n for n in names if not (folder / n).is_file()]
    if missing or not names:
        raise ZooError(f"{folder / (missing or ['data-*.arrow'])[0]}: arrow file named by state.json is missing")
    return [folder / n for n in names]


def _features(files: list[Path], arrow: bool) -> dict:
    """The dataset's features: dataset_info.json beside arrow files, else the schema's HF metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = files[0].parent / "dataset_info.json"
    if arrow and info.is_file():
        return json.loads(info.read_text()).get("features") or {}
    schema = pa.ipc.open_stream(pa.memory_map(str(files[0]))).schema if arrow else pq.read_schema(files[0])
    raw = (schema.metadata or {}).get(b"huggingface")
    return (json.loads(raw).get("info", {}).get("features") or {}) if raw else {}


def _pick(features: dict, wanted: Optional[str], kind: str, columns: list[str], where: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ZooError(f"{where}: no column '{wanted}' (columns: {', '.join(columns)})")
        return wanted
    typed = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == kind]
    if len(typed) == 1:
        return typed[0]
    default = {"Image": ("image", "img"), "ClassLabel": ("label", "labels")}[kind]
    found = [n for n in default if n in columns]
    if not found:
        raise ZooError(f"{where}: cannot tell the {kind} column (columns: {', '.join(columns)}); "
                       f"name it ({'image' if kind == 'Image' else 'label'}_column)")
    return found[0]


class HFDataset:
    """One split of an on-disk HF dataset: the image and label columns, read batch by batch."""

    def __init__(self, path: Path, split: str, where: str, image_column: Optional[str] = None,
                 label_column: Optional[str] = None):
        self.path, self.where = Path(path), where
        self.arrow = self.path.is_dir() and not any(self.path.rglob("*.parquet"))
        if self.path.is_file():
            self.files = [self.path]
        else:
            self.files = _save_to_disk_files(self.path, split) if self.arrow else _split_files(self.path, split)
        features = _features(self.files, self.arrow)
        columns = self._schema_names()
        self.image_column = _pick(features, image_column, "Image", columns, where)
        self.label_column = _pick(features, label_column, "ClassLabel", columns, where)
        label = features.get(self.label_column)
        self.classes = list(label["names"]) if isinstance(label, dict) and label.get("names") else None

    def _schema_names(self) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.ipc.open_stream(pa.memory_map(str(self.files[0]))).schema if self.arrow \
            else pq.read_schema(self.files[0])
        return list(schema.names)

    def batches(self, column: str) -> Iterator:
        """pyarrow arrays of `column`, a bounded batch at a time, in file order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        for file in self.files:
            if self.arrow:
                for batch in pa.ipc.open_stream(pa.memory_map(str(file))):
                    yield batch.column(column)
            else:
                for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS, columns=[column]):
                    yield batch.column(0)

    def labels(self) -> torch.Tensor:
        """Every label of the split (one small column: cheap to hold)."""
        parts = [torch.tensor(array.to_numpy(zero_copy_only=False)) for array in self.batches(self.label_column)]
        if not parts:
            raise ZooError(f"{self.where}: {self.path} holds no rows")
        labels = torch.cat(parts)
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ZooError(f"{self.where}: label column '{self.label_column}' is not integer")
        return labels.to(torch.int64)

    def images(self, rows: torch.Tensor) -> Iterator[tuple[int, Image.Image]]:
        """(row, decoded image) for the sorted `rows`, decoding only those, one batch in memory at a time."""
        wanted, start, i = rows.tolist(), 0, 0
        for array in self.batches(self.image_column):
            end = start + len(array)
            while i < len(wanted) and wanted[i] < end:
                yield wanted[i], self._decode(array[wanted[i] - start].as_py(), wanted[i])
                i += 1
            start = end
            if i == len(wanted):
                return

    def _decode(self, value, row: int) -> Image.Image:
        if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
            path = self.files[0].parent / value["path"]
            value = {"bytes": path.read_bytes() if path.is_file() else None, "path": value["path"]}
        data = value.get("bytes") if isinstance(value, dict) else value
        if not isinstance(data, (bytes, bytearray)):
            raise ZooError(f"{self.where}: row {row} of column '{self.image_column}' holds no image bytes")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            return image
        except OSError as exc:
            raise ZooError(f"{self.where}: row {row} of column '{self.image_column}' is not a readable image: "
                           f"{exc}") from exc


def sample_rows(total: int, max_examples: Optional[int], seed: int) -> torch.Tensor:
    """Sorted row numbers: all of them, or a seeded random `max_examples` of them."""
    if max_examples is None or max_examples >= total:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:max_examples].sort().values


@dataclass
class DatasetSource(FileSource):
    """A task's held-out data written to the zoo's data file as it is decoded (images preprocessed)."""

    dataset: HFDataset
    rows: torch.Tensor
    labels: torch.Tensor
    transform: Callable
    image_size: int

    def write(self, folder: Path, stem: str) -> str:
        path = f"{stem}.safetensors"
        n, size = len(self.rows), self.image_size
        layout = {"images": ((n, 3, size, size), torch.float32), "labels": ((n,), torch.int64)}
        with StreamedSafetensors(folder / path, layout) as out:
            pending = []
            for _, image in self.dataset.images(self.rows):
                pending.append(self._prepared(image))
                if len(pending) == BATCH_ROWS:
                    out.write("images", torch.stack(pending))
                    pending = []
            if pending:
                out.write("images", torch.stack(pending))
            out.write("labels", self.labels)
        return path

    def _prepared(self, image: Image.Image) -> torch.Tensor:
        pixels = self.transform(image)
        if tuple(pixels.shape) != (3, self.image_size, self.image_size):
            raise ZooError(f"{self.dataset.where}: preprocessing gave an image of shape {list(pixels.shape)}, "
                           f"expected [3, {self.image_size}, {self.image_size}]")
        return pixels


def dataset_source(path: Path, split: str, where: str, transform: Callable, image_size: int,
                   max_examples: Optional[int] = None, seed: int = 0, image_column: Optional[str] = None,
                   label_column: Optional[str] = None, classes: Optional[list[str]] = None
                   ) -> tuple[DatasetSource, Optional[list[str]]]:
    """The data source of one task and its class names (given `classes`, else the ClassLabel names)."""
    dataset = HFDataset(path, split, where, image_column, label_column)
    labels = dataset.labels()
    rows = sample_rows(len(labels), max_examples, seed)
    names = classes if classes is not None else dataset.classes
    if int(labels.min()) < 0 or (names is not None and int(labels.max()) >= len(names)):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise ZooError(f"{where}: label {bad} has no class name ({len(names or [])} classes)")
    return DatasetSource(dataset, rows, labels[rows].contiguous(), transform, image_size), names
