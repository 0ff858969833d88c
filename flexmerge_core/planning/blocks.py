"""Partition of merged parameter names into ordered blocks (the unit FlexMerge merges at).

Why derived from names: the same code must serve ViTs of any depth, other transformer
naming styles and arbitrary state dicts, without a table per model. Transformer layers are found by
name (`transformer.resblocks.N.`, `blocks.N.`, `block.N.` (T5), `layers.N.`, `layer.N.`, `h.N.` (GPT-2));
everything else around a stack of layers is placed before it (embeddings, pre-norm) or after it
(final norm, projection/head, `lm_head`). A T5 layer's sub-layers (`layer.K.`) are part of the
component's name (`encoder.block.0.layer.0.SelfAttention`, `...layer.0.layer_norm`).

Model order = forward-pass order, not state_dict order: a ViT's state_dict lists `proj` before
`conv1`, but `proj` runs last. Order: per stack of layers (stacks in order of first appearance):
pre blocks (embeddings, then other pre parts, then the pre-norm), layers by numeric index (inside a
layer, components in the given order, e.g. ln_1, attn, ln_2, mlp, except that a pre-norm listed
after the part it feeds runs just before it: Llama's input_layernorm / post_attention_layernorm before
self_attn / mlp, a T5 sub-layer's layer_norm before its attention or feed-forward), post blocks
(final norm, other post parts, projection/head). Names outside any recognised pattern that sit
before a stack's first layer in the given order count as pre, the others as post. A non-layer name
that shares no module with any stack goes with the last stack that started before it (T5's
`lm_head` follows the decoder), else with the first (`shared` precedes the encoder).
Without any layer stack, the generic fallback groups by module prefix in the given order
(`component`: parent module; `layer`: the path up to its first numeric part, else the top module).

Block names: layer parts are module paths (`transformer.resblocks.3`, `transformer.resblocks.3.attn`);
other parts are their module (`ln_pre`, `proj`), except the synthesized `embeddings` (component) and
`pre`/`post` (layer) blocks, prefixed by the module they share with their stack (`visual.embeddings`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from flexmerge_core.errors import InvalidArgumentError

PRESETS = ("layer", "component", "parameter")   # the one list of granularity presets
DEFAULT_GRANULARITY = "component"               # the paper's default
GRANULARITIES = PRESETS + ("custom",)           # custom = block rules given by the caller

_LAYER = re.compile(r"^(?P<owner>(?:.*?\.)??)(?P<stack>transformer\.resblocks|resblocks|blocks|block|layers|layer|h)"
                    r"\.(?P<index>\d+)\.(?P<rest>.+)$")
_SUBLAYER = re.compile(r"^(layer\.\d+\.)?([^.]+)")        # T5: layer.K.<module>; else the first module
# a pre-norm -> the part it feeds, when a state_dict lists it after that part (Llama, T5)
_FEEDS = {"input_layernorm": "self_attn", "post_attention_layernorm": "mlp", "pre_feedforward_layernorm": "mlp"}

# (region, rank) of a non-layer parameter by the module names in its path; checked in this order.
_EMBEDDINGS = {"class_embedding", "cls_token", "positional_embedding", "pos_embed", "pos_embedding",
               "position_embedding", "position_embeddings", "conv1", "patch_embed", "patch_embedding",
               "patch_embeddings", "token_embedding", "embeddings", "embedding", "embed_tokens", "wte", "wpe",
               "mask_token", "reg_token", "shared"}
_PRE_NORMS = {"ln_pre", "norm_pre", "pre_layrnorm", "pre_layernorm"}
_POST_NORMS = {"ln_post", "ln_final", "norm", "fc_norm", "post_layernorm", "final_layer_norm",
               "final_layernorm", "ln_f", "layernorm"}
_HEADS = {"proj", "text_projection", "visual_projection", "projection", "head", "heads", "attn_pool",
          "pooler", "classifier", "logit_scale", "logit_bias", "lm_head"}
_PRE, _LAYERS, _POST = 0, 1, 2


@dataclass(frozen=True)
class Block:
    name: str
    params: tuple[str, ...]
    numel: int


@dataclass
class BlockSpec:
    blocks: list[Block]
    granularity: str

    @property
    def total_params(self) -> int:
        """P: the parameters of one model over the merged parameter set."""
        return sum(b.numel for b in self.blocks)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]


@dataclass(frozen=True)
class _Place:
    """Where a parameter sits in the forward pass, and its group at each preset granularity."""
    order: tuple          # sort key: model order
    component: str        # block name at `component` granularity
    layer: str            # block name at `layer` granularity


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _non_layer_kind(name: str) -> tuple[int, int] | None:
    """(region, rank) from the module names in the path, or None when nothing is recognised."""
    parts = set(name.split("."))
    if parts & _EMBEDDINGS:
        return _PRE, 0
    if parts & _PRE_NORMS:
        return _PRE, 2
    if parts & _POST_NORMS:
        return _POST, 0
    if parts & _HEADS:
        return _POST, 2
    return None


def _shared_segments(a: list[str], b: list[str]) -> int:
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    return shared


def _stack_for(name: str, pos: int, stacks: list[str], first_layer_pos: dict[str, int]) -> int:
    """The stack a non-layer parameter belongs to: most leading path segments shared, then shallowest,
    then the last stack started before it (else the first)."""
    segments = name.split(".")

    def key(i: int):
        start = first_layer_pos[stacks[i]]
        return (_shared_segments(stacks[i].split("."), segments), -len(stacks[i].split(".")),
                start < pos, start if start < pos else -start)
    return max(range(len(stacks)), key=key)


def _component_rank(component: str, first_seen: dict[str, int]) -> float:
    """Where a layer's component runs: its first appearance, or just before the part a pre-norm feeds."""
    layer, _, leaf = component.rpartition(".")
    fed = _FEEDS.get(leaf)
    if fed is None and leaf == "layer_norm" and layer.rsplit(".", 2)[-2:-1] == ["layer"]:
        siblings = [c for c in first_seen if c.rpartition(".")[0] == layer and c != component]
        fed = siblings[0].rpartition(".")[2] if len(siblings) == 1 else None
    target = f"{layer}.{fed}" if fed else None
    return first_seen[target] - 0.5 if target in first_seen else first_seen[component]


class _Labels:
    """Names of synthesized blocks ("embeddings", "pre", "post"), prefixed by the module they share
    with their stack ("visual.embeddings"); a name two stacks would share gets the stack path instead."""

    def __init__(self):
        self._stack_of: dict[str, str] = {}

    def __call__(self, stack: str, name: str, label: str) -> str:
        segments = name.split(".")
        shared = segments[:_shared_segments(stack.split("."), segments)]
        full = ".".join(shared + [label])
        if self._stack_of.setdefault(full, stack) != stack:
            full = f"{stack}.{label}"
        return full


def _stack_places(names: list[str], matches: dict[str, re.Match]) -> dict[str, _Place]:
    stacks: list[str] = []          # stack paths ("visual.transformer.resblocks"), first-appearance order
    first_layer_pos: dict[str, int] = {}
    for pos, name in enumerate(names):
        if name in matches:
            path = matches[name]["owner"] + matches[name]["stack"]
            if path not in first_layer_pos:
                stacks.append(path)
                first_layer_pos[path] = pos
    label = _Labels()
    first_seen: dict[str, int] = {}
    layer_parts = {}
    for pos, name in enumerate(names):
        m = matches.get(name)
        if m is not None:
            layer = f"{m['owner'] + m['stack']}.{m['index']}"
            layer_parts[name] = (layer, f"{layer}.{_SUBLAYER.match(m['rest']).group(0)}")
            first_seen.setdefault(layer_parts[name][1], pos)
    places = {}
    for pos, name in enumerate(names):
        m = matches.get(name)
        if m is not None:
            layer, component = layer_parts[name]
            order = (stacks.index(m["owner"] + m["stack"]), _LAYERS, int(m["index"]),
                     _component_rank(component, first_seen), pos)
            places[name] = _Place(order, component, layer)
            continue
        s = _stack_for(name, pos, stacks, first_layer_pos)
        kind = _non_layer_kind(name)
        if kind is None:
            kind = (_PRE, 1) if pos < first_layer_pos[stacks[s]] else (_POST, 1)
        region, rank = kind
        component = label(stacks[s], name, "embeddings") if kind == (_PRE, 0) else _module_of(name)
        first_seen.setdefault(component, pos)
        places[name] = _Place((s, region, rank, first_seen[component], pos), component,
                              label(stacks[s], name, "pre" if region == _PRE else "post"))
    return places


def _fallback_places(names: list[str]) -> dict[str, _Place]:
    """Module-prefix grouping for state dicts without a recognised layer stack, in the given order."""
    first_seen: dict[str, int] = {}
    places = {}
    for pos, name in enumerate(names):
        component = _module_of(name)
        parts = name.split(".")
        numeric = next((i for i, p in enumerate(parts[:-1]) if p.isdigit()), None)
        layer = ".".join(parts[:numeric + 1]) if numeric is not None else parts[0]
        first_seen.setdefault(component, pos)
        places[name] = _Place((0, 0, 0, first_seen[component], pos), component, layer)
    return places


def _places(names: list[str]) -> dict[str, _Place]:
    matches = {n: m for n in names if (m := _LAYER.match(n)) is not None}
    return _stack_places(names, matches) if matches else _fallback_places(names)


def _custom_groups(names_in_order: list[str], rules) -> dict[str, str]:
    """{param: block name} by the first matching (block_name, regex) rule; names may use \\1, \\g<x>."""
    compiled = []
    for rule in rules:
        if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and all(isinstance(x, str) for x in rule)):
            raise InvalidArgumentError(f"block rule {rule!r} must be a (block_name, regex) pair")
        try:
            compiled.append((rule[0], re.compile(rule[1])))
        except re.error as exc:
            raise InvalidArgumentError(f"block rule regex '{rule[1]}' is invalid: {exc}") from exc
    groups, unmatched = {}, []
    for name in names_in_order:
        match = next(((template, m) for template, rx in compiled if (m := rx.search(name))), None)
        if match is None:
            unmatched.append(name)
            continue
        template, m = match
        try:
            groups[name] = m.expand(template)
        except (re.error, IndexError) as exc:
            raise InvalidArgumentError(f"block name '{template}' of a custom rule: {exc}") from exc
    if unmatched:
        more = f" (and {len(unmatched) - 3} more)" if len(unmatched) > 3 else ""
        raise InvalidArgumentError(f"no block rule matches parameter(s) {', '.join(unmatched[:3])}{more}")
    return groups


def build_blocks(param_names, shapes, granularity: str = "component", rules=None) -> BlockSpec:
    """Blocks in model order covering every name exactly once.

    granularity: `layer` | `component` (default) | `parameter`; `rules` (a list of
    (block_name, regex), first match wins) gives `custom` blocks and needs granularity
    `component` (the default) or `custom`.
    """
    names = list(param_names)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidArgumentError(f"parameter '{dup}' is listed twice")
    if not names:
        raise InvalidArgumentError("no parameters to partition into blocks")
    missing = [n for n in names if n not in shapes]
    if missing:
        raise InvalidArgumentError(f"no shape given for parameter '{missing[0]}'")
    if granularity not in GRANULARITIES:
        raise InvalidArgumentError(f"unknown granularity '{granularity}' (choose {', '.join(PRESETS)})")
    if rules is not None and granularity not in ("component", "custom"):
        raise InvalidArgumentError(f"custom block rules replace granularity '{granularity}'; pass one or the other")
    if granularity == "custom" and rules is None:
        raise InvalidArgumentError("granularity 'custom' needs block rules")

    places = _places(names)
    ordered = sorted(names, key=lambda n: places[n].order)
    if rules is not None:
        granularity = "custom"
        group_of = _custom_groups(ordered, rules)
    elif granularity == "parameter":
        group_of = {n: n for n in names}
    else:
        group_of = {n: getattr(places[n], granularity) for n in names}

    members: dict[str, list[str]] = {}
    for name in ordered:                       # dict keeps first-member order = model order
        members.setdefault(group_of[name], []).append(name)
    blocks = [Block(group, tuple(params), sum(math.prod(shapes[p]) for p in params))
              for group, params in members.items()]
    return BlockSpec(blocks=blocks, granularity=granularity)
