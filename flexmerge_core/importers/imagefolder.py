"""Held-out data of real tasks: image folders or tensor files, preprocessed with open_clip's transforms.

Why open_clip's own transforms: a fine-tuned CLIP encoder is only accurate on inputs prepared the
way it was trained (resize, centre crop, CLIP mean/std); re-implementing that would drift. Layouts:
  - `<root>/<task>/<class_name>/*.{png,jpg,jpeg}`: classes are the sorted sub-folder names;
  - `<root>/<task>.safetensors|.pt`: `images` + `labels` (int). uint8 images are raw pixels
    ([N, H, W, 3] or [N, 3, H, W]) and go through the transforms; float images are taken as
    already preprocessed and must be [N, 3, S, S] at the model's input size S. Class names, when
    wanted for zero-shot heads, come from `<root>/<task>.classes.txt` (one per line).
The result is what a zoo's data file holds: float32 images [N, 3, S, S] and int64 labels [N].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from flexmerge_core.errors import ZooError
from flexmerge_core.inputs import decode_image, read_text
from flexmerge_core.machine import require_memory
from flexmerge_core.importers.source_files import read_state_dict

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class TaskData:
    images: torch.Tensor            # float32 [N, 3, S, S], preprocessed
    labels: torch.Tensor            # int64 [N]
    classes: Optional[list[str]]    # class names by label, when known
    source: Path


def find_task_data(root: Path, task: str) -> Optional[Path]:
    """`root/<task>/` or `root/<task>.<tensor suffix>`; a unique case-insensitive match also counts."""
    candidates = [root / task] + [root / f"{task}{s}" for s in TENSOR_SUFFIXES]
    exact = [p for p in candidates if p.exists()]
    if exact:
        return exact[0]
    wanted = {c.name.lower() for c in candidates}
    loose = [p for p in root.iterdir() if p.name.lower() in wanted]
    if len(loose) > 1:
        raise ZooError(f"{root}: several data entries match task '{task}': {', '.join(p.name for p in loose)}")
    return loose[0] if loose else None


def _image_folder(folder: Path, transform: Callable, size: int) -> TaskData:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ZooError(f"{folder}: an image folder needs one sub-folder per class (<task>/<class_name>/*.png)")
    listed = [sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for name in classes]
    # decoded, every image is a float32 [3, size, size]; twice that while they are stacked
    require_memory(2 * sum(map(len, listed)) * 3 * size * size * 4, f"the held-out images of {folder}",
                   "use fewer held-out images")
    images, labels = [], []
    for label, files in enumerate(listed):
        for file in files:
            images.append(decode_image(file, lambda img: transform(img.convert("RGB"))))
            labels.append(label)
    if not images:
        raise ZooError(f"{folder}: no .png/.jpg/.jpeg images under its class folders")
    return TaskData(torch.stack(images).float(), torch.tensor(labels, dtype=torch.int64), classes, folder)


def _raw_to_pil(image: torch.Tensor) -> Image.Image:
    hwc = image if image.shape[-1] == 3 else image.permute(1, 2, 0)
    return Image.fromarray(hwc.contiguous().numpy(), mode="RGB")


def _tensor_file(path: Path, transform: Callable, size: int) -> TaskData:
    tensors = read_state_dict(path, "held-out data")
    if "images" not in tensors or "labels" not in tensors:
        raise ZooError(f"{path}: a data file needs tensors 'images' and 'labels', found {', '.join(sorted(tensors))}")
    images, labels = tensors["images"], tensors["labels"]
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels) or labels.is_floating_point():
        raise ZooError(f"{path}: data needs images [N, C, H, W] or [N, H, W, 3] and integer labels [N], "
                       f"found {list(images.shape)} and {list(labels.shape)} {labels.dtype}")
    if images.dtype == torch.uint8:
        if 3 not in (images.shape[1], images.shape[-1]):
            raise ZooError(f"{path}: raw uint8 images must have 3 channels, found shape {list(images.shape)}")
        images = torch.stack([transform(_raw_to_pil(img)) for img in images])
    elif tuple(images.shape[1:]) != (3, size, size):
        raise ZooError(f"{path}: float images are taken as preprocessed and must be [N, 3, {size}, {size}], "
                       f"found {list(images.shape)} (store raw pixels as uint8 to have them preprocessed)")
    names_file = path.with_suffix(".classes.txt")
    classes = [line.strip() for line in read_text(names_file, "class names file").splitlines() if line.strip()] \
        if names_file.exists() else None
    return TaskData(images.float().contiguous(), labels.to(torch.int64), classes, path)


def load_task_data(path: Path, transform: Callable, size: int) -> TaskData:
    """Held-out data of one task from an image folder or a tensor file (see the module docstring)."""
    path = Path(path)
    data = _image_folder(path, transform, size) if path.is_dir() else _tensor_file(path, transform, size)
    if data.classes is not None and int(data.labels.max()) >= len(data.classes):
        raise ZooError(f"{path}: label {int(data.labels.max())} has no class name ({len(data.classes)} classes)")
    if int(data.labels.min()) < 0:
        raise ZooError(f"{path}: labels must be >= 0, found {int(data.labels.min())}")
    return data
