"""open_clip image encoders: the kinds `open_clip_vit` and `open_clip_model`.

`open_clip_vit`: `open_clip.transformer.VisionTransformer(**config)` (the demo's tiny ViT, or any ViT
given by its constructor arguments). `open_clip_model`: the visual tower of a named open_clip CLIP.
Why a named kind: real users arrive with "ViT-B-32" (or ViT-B-16, ViT-L-14) checkpoints, not with
the tower's constructor arguments. The manifest says `{"kind": "open_clip_model", "config":
{"name": "ViT-B-32", "quick_gelu": false}}`; open_clip's own model config gives the tower, so the
merged parameters are exactly the keys of `create_model(name).visual.state_dict()`. Only the visual
tower is built (no text tower, no download), which is also what makes building on the `meta` device
(for the zoo's layout check) free. `quick_gelu` only changes the activation, never the keys.

Why stages: along a curve a task's model changes in one block at a time. A plain ViT's forward is
split into stem (patch embedding, class/positional embeddings, ln_pre), two stages per residual block
(attention half: ln_1, attn, ls_1; MLP half: ln_2, mlp, ls_2), and the pool (ln_post, projection), so
a changed block only forces re-running the stages from its own onwards. Any other tower (attentional
pooling, custom blocks, parameters outside these stages) runs as one stage: correct, not incremental.
open_clip is imported inside functions: importing it costs seconds and most commands never build a model;
the layouts of the common named towers are stored (open_clip_layouts.py), so opening their zoos needs no import.
"""
from __future__ import annotations

import inspect
import re
from typing import Optional
import contextlib
from typing import Iterator

import torch

from flexmerge_core.architectures.base import ArchitectureAdapter, StageSplit
from flexmerge_core.architectures.open_clip_layouts import stored_layout
from flexmerge_core.errors import ZooError

_MODEL_KEYS = {"name", "quick_gelu"}
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(ln_1|attn|ls_1|ln_2|mlp|ls_2)\.")
_FIRST_HALF = ("ln_1", "attn", "ls_1")
_STEM = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")
_POOL = ("ln_post.", "proj")
HUB_PREFIX = "hf-hub:"   # open_clip downloads the config (and weights) of such names


def _check_model_keys(config: dict) -> None:
    """What an `open_clip_model` config must look like, checked without open_clip."""
    unknown = sorted(set(config) - _MODEL_KEYS)
    if unknown or not isinstance(config.get("name"), str):
        raise ZooError(f"zoo.json: architecture 'open_clip_model' takes config {{'name': str, "
                       f"'quick_gelu': bool}}, got keys {', '.join(sorted(config)) or 'none'}")
    if config["name"].startswith(HUB_PREFIX):
        raise ZooError(f"zoo.json: '{config['name']}' names a model on the Hugging Face Hub; FlexMerge works "
                       f"offline: give an open_clip architecture name (e.g. ViT-B-32) and the weights as local files")


def model_config(config: dict) -> dict:
    """open_clip's model config (embed_dim, vision_cfg, text_cfg, ...) for an `open_clip_model` config."""
    import open_clip

    _check_model_keys(config)
    found = open_clip.get_model_config(config["name"])
    if found is None or "vision_cfg" not in found:
        raise ZooError(f"zoo.json: '{config['name']}' is not an open_clip model name "
                       f"(see open_clip.list_models())")
    if config.get("quick_gelu") is not None:
        found["quick_gelu"] = bool(config["quick_gelu"])
    return found


def build_visual(config: dict) -> torch.nn.Module:
    """The named model's visual tower, randomly initialised (weights come from the zoo's files)."""
    from open_clip.model import _build_vision_tower

    cfg = model_config(config)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))


def _hub_files(config: dict, key: str) -> str:
    """' (Hugging Face files of REPO)' when the model's text config names a Hugging Face repository."""
    repo = model_config(config).get("text_cfg", {}).get(key)
    return f" (Hugging Face files of '{repo}')" if repo else ""


@contextlib.contextmanager
def local_files_only(what: str) -> Iterator[None]:
    """Some towers (Hugging Face text encoders and tokenizers, e.g. of SigLIP or RoBERTa CLIPs) read files
    from the Hugging Face cache; offline (flexmerge_core/__init__.py) a missing one is this one line."""
    try:
        yield
    except (OSError, ValueError, ImportError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ZooError(f"{what} needs files that are not on this machine ({first[:300]}); FlexMerge works "
                       f"offline: put them in the Hugging Face cache (HF_HOME) or give a head file") from exc


def build_clip(config: dict) -> torch.nn.Module:
    """The whole CLIP model (both towers, random init, no download): the text tower for zero-shot heads."""
    import open_clip

    with local_files_only(f"the text tower of '{config['name']}'{_hub_files(config, 'hf_model_name')}"):
        return open_clip.create_model(config["name"], pretrained=None,
                                      force_quick_gelu=bool(config.get("quick_gelu", False)))


def tokenizer(config: dict):
    """open_clip's tokenizer of the model (for zero-shot prompts)."""
    import open_clip

    with local_files_only(f"the tokenizer of '{config['name']}'{_hub_files(config, 'hf_tokenizer_name')}"):
        return open_clip.get_tokenizer(config["name"])


def eval_transform(config: dict):
    """open_clip's own inference preprocessing for a named model (resize, crop, normalise)."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = model_config(config)
    settings = merge_preprocess_dict(asdict(PreprocessCfg()), cfg.get("preprocess_cfg", {}))
    settings["size"] = cfg["vision_cfg"].get("image_size", settings["size"])
    return image_transform_v2(PreprocessCfg(**settings), is_train=False)


def _vit_stage(name: str, layers: int) -> Optional[int]:
    match = _RESBLOCK.match(name)
    if match:
        return 2 * int(match.group(1)) + (1 if match.group(2) in _FIRST_HALF else 2)
    if name.startswith(_STEM):
        return 0
    if name.startswith(_POOL):
        return 2 * layers + 1
    return None


def _is_plain_vit(encoder: torch.nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    return (isinstance(encoder, VisionTransformer) and getattr(encoder, "attn_pool", None) is None
            and all(type(block) is ResidualAttentionBlock for block in encoder.transformer.resblocks))


def vit_stages(encoder: torch.nn.Module) -> Optional[StageSplit]:
    """Stages 0 stem; 2i+1 and 2i+2 the attention and MLP halves of residual block i; 2L+1 the pool."""
    if not _is_plain_vit(encoder):
        return None
    layers = len(encoder.transformer.resblocks)
    stage = {n: _vit_stage(n, layers) for n in encoder.state_dict()}
    if any(s is None for s in stage.values()):
        return None
    batch_first = getattr(encoder.transformer, "batch_first", True)

    def run(x: torch.Tensor, s: int) -> torch.Tensor:
        if s == 0:
            x = encoder._embeds(x)
            return x if batch_first else x.transpose(0, 1).contiguous()
        if s <= 2 * layers:   # the two residual halves of ResidualAttentionBlock.forward
            block = encoder.transformer.resblocks[(s - 1) // 2]
            if s % 2:
                return x + block.ls_1(block.attention(q_x=block.ln_1(x)))
            return x + block.ls_2(block.mlp(block.ln_2(x)))
        if not batch_first:
            x = x.transpose(0, 1)
        pooled, _ = encoder._pool(x)
        return pooled @ encoder.proj if encoder.proj is not None else pooled

    return StageSplit(num_stages=max(stage.values()) + 1, stage_of=stage.__getitem__, run=run)


class _OpenClipVisual(ArchitectureAdapter):
    """What both kinds share: the ViT stage split and the projection as the feature width."""

    def feature_dim(self, config: dict, shapes: dict[str, tuple[int, ...]]) -> Optional[int]:
        proj = shapes.get("proj")
        return proj[1] if proj is not None and len(proj) == 2 else None

    def stages(self, module: torch.nn.Module) -> Optional[StageSplit]:
        return vit_stages(module)


class OpenClipViT(_OpenClipVisual):
    """`VisionTransformer(**config)`: config = its constructor arguments."""

    kind = "open_clip_vit"

    def check_config(self, config: dict) -> dict:
        from open_clip.transformer import VisionTransformer

        config = super().check_config(config)
        params = inspect.signature(VisionTransformer.__init__).parameters
        unknown = sorted(set(config) - set(params) - {"self"})
        missing = [n for n, p in params.items() if n != "self" and p.default is p.empty and n not in config]
        if unknown or missing:
            problem = f"unknown key '{unknown[0]}'" if unknown else f"missing key '{missing[0]}'"
            raise ZooError(f"zoo.json: architecture '{self.kind}' cannot be built from its config: {problem}")
        return config

    def build(self, config: dict) -> torch.nn.Module:
        from open_clip.transformer import VisionTransformer

        return VisionTransformer(**config)

    def input_transform(self, config: dict):
        from open_clip import image_transform

        return image_transform(config["image_size"], is_train=False)

    def expected_input(self, config: dict) -> dict:
        return {"channels": 3, "image_size": config["image_size"]}


class OpenClipModel(_OpenClipVisual):
    """The visual tower of a named open_clip model: config = {"name": ..., "quick_gelu": optional bool}."""

    kind = "open_clip_model"

    def check_config(self, config: dict) -> dict:
        _check_model_keys(super().check_config(config))
        if stored_layout(config["name"]) is None:   # a stored tower's name is a known one
            model_config(config)
        return config

    def build(self, config: dict) -> torch.nn.Module:
        return build_visual(config)

    def layout(self, config: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        stored = stored_layout(config["name"])
        if stored is None:
            return super().layout(config)
        dtype = torch.get_default_dtype()   # what a build would give its parameters
        return {name: (shape, dtype) for name, shape in stored.items()}

    def tied(self, config: dict) -> dict[str, str]:
        return {} if stored_layout(config["name"]) is not None else super().tied(config)

    def input_fits(self, config: dict, shapes: dict[str, tuple[int, ...]], input_shape: tuple[int, ...]) -> bool:
        """A stored tower is a plain ViT: RGB images whose p x p patches (conv1, stride p) plus the class token
        are as many as its positions."""
        if stored_layout(config["name"]) is None or len(input_shape) != 3:
            return False
        channels, height, width = input_shape
        patch, positions = shapes["conv1.weight"][-1], shapes["positional_embedding"][0]
        return channels == 3 and (height // patch) * (width // patch) + 1 == positions

    def input_transform(self, config: dict):
        return eval_transform(config)

    def expected_input(self, config: dict) -> dict:
        return {"channels": 3, "image_size": model_config(config)["vision_cfg"].get("image_size", 224)}


ADAPTERS = (OpenClipViT(), OpenClipModel())
