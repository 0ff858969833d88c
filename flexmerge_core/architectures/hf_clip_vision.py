"""HuggingFace CLIP image encoders: the kind `hf_clip_vision`.

The module is transformers' `CLIPVisionModelWithProjection`: the vision tower of a `CLIPModel` (keys
`vision_model.*`, as a CLIPModel and a transformers-4 `CLIPVisionModel` name them) plus
`visual_projection.weight`. Why the projection belongs to the model: FusionBench (and CLIP zero-shot
heads) classify the projected pooled output, `CLIPModel.get_image_features`; a fine-tuned
`CLIPVisionModel` folder has no projection, and the importer then gives every task the pretrained one
(see importers/hf_clip.py for how it stays unmerged).
Manifest config: `{"vision_config": {CLIPVisionConfig arguments}, "preprocess": {...}}`; `preprocess`
(optional; CLIP's defaults) holds the folder's `preprocessor_config.json` values (resize, crop, rescale,
normalise; see hf_image_preprocess.py), so held-out images are prepared as the model was trained.
Why stages: stem (embeddings, pre_layrnorm), then per encoder layer its attention half (layer_norm1,
self_attn) and its MLP half (layer_norm2, mlp), then the pool (post_layernorm of the class token and
the projection): a changed block re-runs only the stages from its own onwards.
transformers is imported inside functions: it costs seconds and most commands never build a model.
"""
from __future__ import annotations

import inspect
import re
from typing import Optional

import torch

from flexmerge_core.architectures.base import ArchitectureAdapter, StageSplit
from flexmerge_core.architectures.hf_image_preprocess import ImageTransform, normalize_preprocess, output_size
from flexmerge_core.errors import ZooError

KIND = "hf_clip_vision"
PROJECTION = "visual_projection.weight"
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(layer_norm1|self_attn|layer_norm2|mlp)\.")
_STEM = ("vision_model.embeddings.", "vision_model.pre_layrnorm.")
_POOL = ("vision_model.post_layernorm.", "visual_projection.")
# config.json bookkeeping that CLIPVisionConfig accepts but that never changes the model
_IGNORED = {"transformers_version", "architectures", "output_hidden_states", "return_dict", "dtype",
            "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type"}


def vision_config_keys() -> set[str]:
    """The CLIPVisionConfig arguments that shape the model (what a manifest's vision_config may hold)."""
    from transformers import CLIPVisionConfig

    return set(inspect.signature(CLIPVisionConfig.__init__).parameters) - {"self", "kwargs"} - _IGNORED


def clean_vision_config(raw: dict) -> dict:
    """A config.json's vision config reduced to the arguments that shape the model (the rest is bookkeeping)."""
    keys = vision_config_keys()
    return {k: raw[k] for k in sorted(raw) if k in keys}


def _stage_of(name: str, layers: int) -> Optional[int]:
    match = _LAYER.match(name)
    if match:
        return 2 * int(match.group(1)) + (1 if match.group(2) in ("layer_norm1", "self_attn") else 2)
    if name.startswith(_STEM):
        return 0
    if name.startswith(_POOL):
        return 2 * layers + 1
    return None


class HFClipVision(ArchitectureAdapter):
    """`CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_config))`; features = projected pooled output."""

    kind = KIND

    def check_config(self, config: dict) -> dict:
        config = super().check_config(config)
        unknown = sorted(set(config) - {"vision_config", "preprocess"})
        vision = config.get("vision_config")
        if unknown or not isinstance(vision, dict):
            raise ZooError(f"zoo.json: architecture '{KIND}' takes config {{'vision_config': {{...}}, "
                           f"'preprocess': {{...}}}}, got keys {', '.join(sorted(config)) or 'none'}")
        bad = sorted(set(vision) - vision_config_keys())
        if bad:
            raise ZooError(f"zoo.json: architecture '{KIND}': unknown vision_config key '{bad[0]}'")
        if config.get("preprocess") is not None:
            normalize_preprocess(config["preprocess"], f"zoo.json: architecture '{KIND}' preprocess",
                                 vision.get("image_size", 224))
        return config

    def build(self, config: dict) -> torch.nn.Module:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection(CLIPVisionConfig(**config["vision_config"])).eval()

    def feature_dim(self, config: dict, shapes: dict[str, tuple[int, ...]]) -> Optional[int]:
        proj = shapes.get(PROJECTION)
        return proj[0] if proj is not None and len(proj) == 2 else None

    def forward(self, module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return module(pixel_values=inputs).image_embeds

    def stages(self, module: torch.nn.Module) -> Optional[StageSplit]:
        vision, projection = module.vision_model, module.visual_projection
        layers = vision.encoder.layers
        stage = {n: _stage_of(n, len(layers)) for n in module.state_dict()}
        if any(s is None for s in stage.values()):
            return None

        def run(x: torch.Tensor, s: int) -> torch.Tensor:
            if s == 0:
                return vision.pre_layrnorm(vision.embeddings(x))
            if s <= 2 * len(layers):   # the two residual halves of CLIPEncoderLayer.forward
                layer = layers[(s - 1) // 2]
                if s % 2:
                    return x + layer.self_attn(hidden_states=layer.layer_norm1(x), attention_mask=None)[0]
                return x + layer.mlp(layer.layer_norm2(x))
            return projection(vision.post_layernorm(x[:, 0, :]))

        return StageSplit(num_stages=2 * len(layers) + 2, stage_of=stage.__getitem__, run=run)

    def _preprocess(self, config: dict) -> dict:
        image_size = config["vision_config"].get("image_size", 224)
        return normalize_preprocess(config.get("preprocess") or {}, f"architecture '{KIND}'", image_size)

    def input_transform(self, config: dict):
        return ImageTransform(self._preprocess(config))

    def expected_input(self, config: dict) -> dict:
        height, width = output_size(self._preprocess(config), config["vision_config"].get("image_size", 224))
        if height != width:
            raise ZooError(f"architecture '{KIND}': preprocessing yields {height}x{width} images; "
                           f"held-out data needs square inputs")
        return {"channels": 3, "image_size": height}


ADAPTERS = (HFClipVision(),)
