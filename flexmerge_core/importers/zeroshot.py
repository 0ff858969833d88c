"""Zero-shot classification heads from class names, prompt templates and the pretrained text tower.

Why: many tasks come without a trained head; CLIP's text tower turns "a photo of a {class}." into a
class embedding, which is a linear head over L2-normalised image features (zoo `head_input =
"normalized"`). Per class: embed every template, normalise each, average, normalise again; the
head is those rows times exp(logit_scale), bias 0 (the usual CLIP zero-shot recipe). Heads are
cached on disk keyed by the text tower's identity (model name, tensor bytes), classes and templates,
so re-importing a zoo (or importing another zoo on the same CLIP) does not re-encode prompts. A text
tower is any `PromptEncoder` (open_clip's here; HuggingFace CLIP's in hf_clip.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flexmerge_core.cache import atomic_write, cache_root, content_hash, tensors_digest
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.architectures.open_clip import build_clip

ZEROSHOT_VERSION = "zeroshot/1"


def named_templates(name: str) -> list[str]:
    """open_clip's ImageNet prompt sets: 'simple' (7 prompts) or 'openai' (80)."""
    from open_clip import zero_shot_metadata as meta

    sets = {"simple": meta.SIMPLE_IMAGENET_TEMPLATES, "openai": meta.OPENAI_IMAGENET_TEMPLATES}
    return [template("{}") for template in sets[name]]


def load_templates(spec: str | Sequence[str] | None) -> list[str]:
    """Templates from a list, a set name ('simple', 'openai'), or a file (JSON list or one per line)."""
    if spec is None:
        spec = "simple"
    if isinstance(spec, str):
        if spec in ("simple", "openai"):
            return named_templates(spec)
        path = Path(spec)
        if not path.is_file():
            raise InvalidArgumentError(f"--templates: '{spec}' is neither 'simple', 'openai' nor a file")
        text = path.read_text()
        try:
            spec = json.loads(text)
        except ValueError:
            spec = [line.strip() for line in text.splitlines() if line.strip()]
    templates = list(spec)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if not templates or bad:
        raise InvalidArgumentError(f"--templates: each template must contain '{{}}' exactly once, got {bad[:1] or 'none'}")
    return templates


class PromptEncoder:
    """What a zero-shot head needs of a text tower."""

    def identity(self) -> list:
        """JSON-able facts that determine the tower's embeddings (the head cache's key)."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), D] text embeddings in the image features' space (not normalised)."""
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        """exp(logit_scale): the scale of the head's rows."""
        raise NotImplementedError


class TextTower(PromptEncoder):
    """An open_clip CLIP model whose text tower holds a checkpoint's weights (its visual tower is unused)."""

    def __init__(self, config: dict, model: torch.nn.Module, text_state: dict[str, torch.Tensor]):
        self.config, self.model = config, model.eval()
        self.digest = tensors_digest(text_state)

    @classmethod
    def from_clip_rest(cls, config: dict, clip_rest: dict[str, torch.Tensor]) -> "TextTower | None":
        """The text tower when `clip_rest` (a CLIP state dict's non-visual tensors) is complete, else None."""
        if not clip_rest:
            return None
        model = build_clip(config)
        names = [n for n in model.state_dict() if not n.startswith("visual.")]
        if not all(n in clip_rest and clip_rest[n].shape == model.state_dict()[n].shape for n in names):
            return None
        text_state = {n: clip_rest[n] for n in names}
        model.load_state_dict(text_state, strict=False)
        return cls(config, model, text_state)

    def identity(self) -> list:
        return [self.config.get("name"), bool(self.config.get("quick_gelu", False)), self.digest]

    def encode(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        return self.model.encode_text(open_clip.get_tokenizer(self.config["name"])(texts))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()


def prompt_label(class_name: str) -> str:
    """Folder names often use underscores for spaces ("golden_retriever")."""
    return class_name.replace("_", " ")


@torch.no_grad()
def _encode(tower: PromptEncoder, classes: list[str], templates: list[str]) -> torch.Tensor:
    rows = []
    for name in classes:
        embedded = F.normalize(tower.encode([t.format(prompt_label(name)) for t in templates]).float(), dim=-1)
        embedded = embedded.mean(dim=0)
        rows.append(embedded / embedded.norm())
    return torch.stack(rows) * tower.logit_scale().float()


def zeroshot_head(tower: PromptEncoder, classes: list[str], templates: list[str]) -> dict[str, torch.Tensor]:
    """{weight [C, D], bias [C]} for `classes`, from the disk cache when known."""
    key = content_hash(ZEROSHOT_VERSION, *tower.identity(), list(classes), list(templates))
    path = cache_root() / "zeroshot" / f"{key}.safetensors"
    if path.is_file():
        try:
            cached = load_file(str(path))
            if cached["weight"].shape[0] == len(classes) and bool(torch.isfinite(cached["weight"]).all()):
                return {"weight": cached["weight"], "bias": cached["bias"]}
        except (SafetensorError, OSError, KeyError):
            pass   # a damaged entry is recomputed and overwritten
    weight = _encode(tower, list(classes), list(templates))
    head = {"weight": weight.contiguous(), "bias": torch.zeros(len(classes))}
    atomic_write(path, lambda tmp: save_file(head, str(tmp)))
    return head
