"""The `open_clip_model` architecture kind: the visual encoder of a named open_clip CLIP model.

Why a named kind: real users arrive with "ViT-B-32" (or ViT-B-16, ViT-L-14) checkpoints, not with
the tower's constructor arguments. The manifest says `{"kind": "open_clip_model", "config":
{"name": "ViT-B-32", "quick_gelu": false}}`; open_clip's own model config gives the tower, so the
merged parameters are exactly the keys of `create_model(name).visual.state_dict()`. Only the visual
tower is built (no text tower, no download), which is also what makes building on the `meta` device
(for the zoo's layout check) free. `quick_gelu` only changes the activation, never the keys.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from flexmerge_core.errors import ZooError

_CONFIG_KEYS = {"name", "quick_gelu"}
HUB_PREFIX = "hf-hub:"   # open_clip downloads the config (and weights) of such names


def model_config(config: dict) -> dict:
    """open_clip's model config (embed_dim, vision_cfg, text_cfg, ...) for the manifest's `config`."""
    import open_clip

    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown or not isinstance(config.get("name"), str):
        raise ZooError(f"zoo.json: architecture 'open_clip_model' takes config {{'name': str, "
                       f"'quick_gelu': bool}}, got keys {', '.join(sorted(config)) or 'none'}")
    if config["name"].startswith(HUB_PREFIX):
        raise ZooError(f"zoo.json: '{config['name']}' names a model on the Hugging Face Hub; FlexMerge works "
                       f"offline: give an open_clip architecture name (e.g. ViT-B-32) and the weights as local files")
    found = open_clip.get_model_config(config["name"])
    if found is None or "vision_cfg" not in found:
        raise ZooError(f"zoo.json: '{config['name']}' is not an open_clip model name "
                       f"(see open_clip.list_models())")
    if config.get("quick_gelu") is not None:
        found["quick_gelu"] = bool(config["quick_gelu"])
    return found


def build_visual(config: dict) -> torch.nn.Module:
    """The model's visual tower, randomly initialised (weights come from the zoo's files)."""
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
    """open_clip's own inference preprocessing for this architecture (resize, crop, normalise)."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = model_config(config)
    settings = merge_preprocess_dict(asdict(PreprocessCfg()), cfg.get("preprocess_cfg", {}))
    settings["size"] = cfg["vision_cfg"].get("image_size", settings["size"])
    return image_transform_v2(PreprocessCfg(**settings), is_train=False)
