"""A HuggingFace image processor's inference preprocessing, rebuilt from its `preprocessor_config.json` values.

Why our own: a fine-tuned encoder is only accurate on inputs prepared the way it was trained, and the
folder's `preprocessor_config.json` says how (resize, centre crop, rescale, normalise). Instantiating
transformers' processor would tie the zoo to that library's processor classes and their backends (the
torchvision backend resizes tensors, not PIL images, and differs by up to a grey level); the few steps
are plain PIL + torch. The crop takes floor((H - h) / 2) as HF does (torchvision rounds, which moves odd
margins by one pixel). A manifest keeps the file's own keys (`PREPROCESS_KEYS`); `normalize_preprocess`
reads their spellings (`size` as an int, {"shortest_edge"} or {"height", "width"}; `crop_size` likewise).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from flexmerge_core.errors import ZooError

if TYPE_CHECKING:   # PIL is imported where images are handled: opening a zoo never needs it
    from PIL import Image

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BICUBIC = 3
PREPROCESS_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                   "do_normalize", "image_mean", "image_std")


def _size(where: str, value, key: str) -> Optional[dict]:
    """{"shortest_edge": n} or {"height": h, "width": w} from an int or a size dict."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return {"shortest_edge": value} if key == "size" else {"height": value, "width": value}
    if isinstance(value, dict) and isinstance(value.get("shortest_edge"), int):
        return {"shortest_edge": value["shortest_edge"]}
    if isinstance(value, dict) and isinstance(value.get("height"), int) and isinstance(value.get("width"), int):
        return {"height": value["height"], "width": value["width"]}
    raise ZooError(f"{where}: '{key}' must be an int, {{'shortest_edge': n}} or {{'height': h, 'width': w}}, "
                   f"got {value!r}")


def preprocess_subset(document: dict) -> dict:
    """What a manifest keeps of a `preprocessor_config.json` document (the rest names processor classes)."""
    return {k: document[k] for k in PREPROCESS_KEYS if k in document}


def normalize_preprocess(raw: dict, where: str, image_size: int) -> dict:
    """The steps of a `preprocessor_config.json`'s values (CLIP's defaults where absent)."""
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: expected a JSON object")
    unknown = sorted(set(raw) - set(PREPROCESS_KEYS))
    if unknown:
        raise ZooError(f"{where}: unknown preprocessing key '{unknown[0]}' (known: {', '.join(PREPROCESS_KEYS)})")
    resize = _size(where, raw.get("size", image_size), "size") if raw.get("do_resize", True) else None
    crop = _size(where, raw.get("crop_size", image_size), "crop_size") if raw.get("do_center_crop", True) else None
    rescale = float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0
    normalize = raw.get("do_normalize", True)
    mean = [float(v) for v in raw.get("image_mean", CLIP_MEAN)] if normalize else None
    std = [float(v) for v in raw.get("image_std", CLIP_STD)] if normalize else None
    if mean is not None and (len(mean) != 3 or len(std) != 3 or min(std) <= 0):
        raise ZooError(f"{where}: image_mean and image_std need 3 values each (std > 0)")
    from PIL import Image

    resample = raw.get("resample", BICUBIC)
    if not isinstance(resample, int) or resample not in {m.value for m in Image.Resampling}:
        raise ZooError(f"{where}: resample {resample!r} is not a PIL resampling filter number")
    return {"resize": resize, "crop": crop, "rescale": rescale, "mean": mean, "std": std, "resample": resample}


def output_size(preprocess: dict, image_size: int) -> tuple[int, int]:
    """(height, width) of a preprocessed image: the crop, else a fixed resize, else the model's input size."""
    for step in (preprocess.get("crop"), preprocess.get("resize")):
        if step is not None and "height" in step:
            return step["height"], step["width"]
    return image_size, image_size


def _resized(image: Image.Image, resize: dict, resample: int) -> Image.Image:
    width, height = image.size
    if "shortest_edge" in resize:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize["shortest_edge"], int(resize["shortest_edge"] * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        size = (resize["width"], resize["height"])
    return image if size == image.size else image.resize(size, resample=resample)


def _cropped(pixels: torch.Tensor, crop: dict) -> torch.Tensor:
    """Centre crop of [3, H, W], zero-padded first when the image is smaller (as HF's center_crop)."""
    height, width = pixels.shape[1:]
    h, w = crop["height"], crop["width"]
    if h > height or w > width:
        padded = torch.zeros(3, max(h, height), max(w, width), dtype=pixels.dtype)
        top, left = (padded.shape[1] - height) // 2, (padded.shape[2] - width) // 2
        padded[:, top:top + height, left:left + width] = pixels
        pixels, height, width = padded, padded.shape[1], padded.shape[2]
    top, left = (height - h) // 2, (width - w) // 2
    return pixels[:, top:top + h, left:left + w]


class ImageTransform:
    """PIL image -> float32 [3, h, w]: RGB, resize, centre crop, rescale, normalise (a picklable callable)."""

    def __init__(self, preprocess: dict):
        self.preprocess = preprocess

    def __call__(self, image: Image.Image) -> torch.Tensor:
        p = self.preprocess
        image = image.convert("RGB")
        if p["resize"] is not None:
            image = _resized(image, p["resize"], p["resample"])
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1)
        if p["crop"] is not None:
            pixels = _cropped(pixels, p["crop"])
        out = pixels.to(torch.float32) * p["rescale"]
        if p["mean"] is not None:
            out = (out - torch.tensor(p["mean"]).view(3, 1, 1)) / torch.tensor(p["std"]).view(3, 1, 1)
        return out.contiguous()
