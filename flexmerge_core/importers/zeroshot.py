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

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from flexmerge_core.cache import cache_root, content_hash, read_tensor_entry, tensors_digest, write_tensor_entry
from flexmerge_core.errors import InvalidArgumentError
from flexmerge_core.inputs import parse_json, read_text
from flexmerge_core.architectures.open_clip import build_clip, tokenizer

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
        if not path.exists():
            raise InvalidArgumentError(f"--templates: '{spec}' is neither 'simple', 'openai' nor a file")
        text = read_text(path, "templates file", InvalidArgumentError)
        spec = parse_json(text, str(path), InvalidArgumentError) if text.lstrip().startswith("[") else \
            [line.strip() for line in text.splitlines() if line.strip()]
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
        return self.model.encode_text(tokenizer(self.config)(texts))

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
    entry = read_tensor_entry(path, key)   # a damaged or mislabeled entry is recomputed and overwritten
    if entry is not None and entry[0].get("weight") is not None and entry[0]["weight"].shape[0] == len(classes) \
            and "bias" in entry[0]:
        return {"weight": entry[0]["weight"], "bias": entry[0]["bias"]}
    weight = _encode(tower, list(classes), list(templates))
    head = {"weight": weight.contiguous(), "bias": torch.zeros(len(classes))}
    write_tensor_entry(path, key, head)
    return head
