"""The `image_classification` task kind: images in, a linear head's argmax against int64 labels, accuracy.

Files: the data file holds exactly `images` (float [N, C, H, W], already preprocessed) and `labels`
(int64 [N]); the head file exactly `weight` [C, D] and `bias` [C]. With `head_input = "normalized"`
(CLIP zero-shot heads, whose weights are normalised text embeddings) the encoder outputs are
L2-normalised before the head. Image folders are converted into such data files by
importers/imagefolder.py.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from flexmerge_core.errors import ZooError
from flexmerge_core.tasks.base import HeldOut, TaskFiles, TaskKind


def head_logits(features: torch.Tensor, head: dict[str, Any]) -> torch.Tensor:
    """Class logits: head(features), features L2-normalised first for CLIP zero-shot heads."""
    if head["normalized"]:
        features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features @ head["weight"].t() + head["bias"]


def _num_classes(files: TaskFiles) -> Optional[int]:
    """Outputs of the task's head (else the manifest's class list): the valid labels are 0..C-1."""
    if files.head is not None:
        return files.head.shapes["weight"][0]
    return None if files.classes is None else len(files.classes)


def _tensor_shapes(file, role: str, names: tuple[str, str]) -> tuple:
    """The shapes of exactly these two tensors of a head or data file (one-line ZooError otherwise)."""
    if set(file.names) != set(names):
        raise ZooError(f"{file.path}: {role} must hold exactly '{names[0]}' and '{names[1]}', "
                       f"found {', '.join(sorted(file.names))}")
    return file.shapes[names[0]], file.shapes[names[1]]


def _check_labels(files: TaskFiles, labels: torch.Tensor) -> None:
    """Label values are only known once read: one outside the head's classes would make accuracy silently wrong."""
    num_classes = _num_classes(files)
    if num_classes is None:
        return
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ZooError(f"{files.data.path}: data of task '{files.task}' has label {int(bad[0])} outside "
                       f"the head's {num_classes} classes (0..{num_classes - 1})")


class ImageClassification(TaskKind):
    name = "image_classification"
    metric = "accuracy"
    higher_is_better = True

    def validate(self, files: TaskFiles) -> None:
        if files.head is not None:
            self._check_head(files)
        if files.data is not None:
            self._check_data(files)

    @staticmethod
    def _check_head(files: TaskFiles) -> None:
        head, task = files.head, files.task
        weight, bias = _tensor_shapes(head, f"head of task '{task}'", ("weight", "bias"))
        if len(weight) != 2 or bias != (weight[0],):
            raise ZooError(f"{head.path}: head of task '{task}' needs weight [C, D] and bias [C], "
                           f"found {list(weight)} and {list(bias)}")
        if files.classes is not None and weight[0] != len(files.classes):
            raise ZooError(f"{head.path}: head of task '{task}' has {weight[0]} outputs but the "
                           f"manifest lists {len(files.classes)} classes")
        if files.feature_dim is not None and weight[1] != files.feature_dim:
            raise ZooError(f"{head.path}: head of task '{task}' takes {weight[1]} features, "
                           f"the encoder outputs {files.feature_dim}")

    @staticmethod
    def _check_data(files: TaskFiles) -> None:
        data, task = files.data, files.task
        images, labels = _tensor_shapes(data, f"data of task '{task}'", ("images", "labels"))
        if len(images) != 4 or len(labels) != 1 or images[0] != labels[0]:
            raise ZooError(f"{data.path}: data of task '{task}' needs images [N, C, H, W] and labels [N], "
                           f"found {list(images)} and {list(labels)}")
        if images[0] == 0:
            raise ZooError(f"{data.path}: data of task '{task}' holds no images (N = 0)")
        if data.dtypes["images"] != torch.float32 or data.dtypes["labels"] != torch.int64:
            raise ZooError(f"{data.path}: data of task '{task}' needs float32 images and int64 labels, "
                           f"found {data.dtypes['images']} and {data.dtypes['labels']}")
        _check_labels(files, data.read("labels"))   # labels are small ([N] integers): checked at open

    def input_shape(self, files: TaskFiles) -> Optional[tuple[int, ...]]:
        return tuple(files.data.shapes["images"][1:])

    def load(self, zoo, task_id: int) -> Optional[HeldOut]:
        files = zoo.task_files(task_id)
        if files.data is None:
            return None
        images, labels = files.data.read("images"), files.data.read("labels")   # labels checked at open
        head = zoo.head(task_id)
        if head is not None:
            head = {**head, "normalized": files.head_input == "normalized"}
        return HeldOut(images, labels, head)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor, head: dict[str, Any]) -> torch.Tensor:
        """1.0 where the head's top class is the label, else 0.0."""
        logits = head_logits(outputs.float(), head)
        return (logits.argmax(dim=-1) == targets).float()
