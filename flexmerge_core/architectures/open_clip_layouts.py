"""The layouts of common open_clip visual towers, kept as data so opening a zoo never imports open_clip.

Why: checking a zoo's checkpoints against its architecture needs only the tower's parameter names and
shapes in state_dict order, but asking open_clip for them imports torchvision and transformers: 1.9 s
on every command, more than the whole merge of an `export --size 1` of 8 ViT-B-32 tasks. The towers
below (the paper's ViT-B-32, ViT-B-16 and ViT-L-14, under the open_clip names that build the same
tower) are open_clip OPEN_CLIP_VERSION's; tests/test_architecture_open_clip.py checks each name against
the installed library (names, shapes, dtypes, order, no tied aliases). Another name, or
another installed open_clip version, is laid out by building the tower on the meta device as before.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

OPEN_CLIP_VERSION = "3.3.0"
DISTRIBUTION = "open_clip_torch"


def plain_vit(width: int, layers: int, patch: int, tokens: int, embed: int) -> dict[str, tuple[int, ...]]:
    """{name: shape} in state_dict order of open_clip's plain VisionTransformer: `layers` residual blocks of
    `width` (MLP 4 x width), `patch` x `patch` RGB patches, `tokens` positions (class token included),
    projection to `embed`."""
    block = {"ln_1.weight": (width,), "ln_1.bias": (width,),
             "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
             "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
             "ln_2.weight": (width,), "ln_2.bias": (width,),
             "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
             "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,)}
    layout = {"class_embedding": (width,), "positional_embedding": (tokens, width), "proj": (width, embed),
              "conv1.weight": (width, 3, patch, patch), "ln_pre.weight": (width,), "ln_pre.bias": (width,)}
    for i in range(layers):
        layout.update({f"transformer.resblocks.{i}.{name}": shape for name, shape in block.items()})
    layout.update({"ln_post.weight": (width,), "ln_post.bias": (width,)})
    return layout


# tower: (the open_clip names that build it, plain_vit's arguments)
TOWERS = {
    "ViT-B-32": (("ViT-B-32", "ViT-B-32-quickgelu", "coca_roberta-ViT-B-32", "mt5-base-ViT-B-32", "nllb-clip-base",
                  "roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32"), (768, 12, 32, 50, 512)),
    "ViT-B-16": (("ViT-B-16", "ViT-B-16-quickgelu"), (768, 12, 16, 197, 512)),
    "ViT-L-14": (("ViT-L-14", "ViT-L-14-quickgelu", "ViT-L-14-worldwide", "ViT-L-14-worldwide-quickgelu"),
                 (1024, 24, 14, 257, 768)),
}


@lru_cache(maxsize=1)
def _installed_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def stored_layout(name: str) -> Optional[dict[str, tuple[int, ...]]]:
    """{name: shape} of the visual tower of open_clip model `name`, or None when it is not stored here
    or the installed open_clip is not the version these layouts are."""
    if _installed_version() != OPEN_CLIP_VERSION:
        return None
    for names, arguments in TOWERS.values():
        if name in names:
            return plain_vit(*arguments)
    return None
