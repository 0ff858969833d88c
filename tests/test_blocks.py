"""Blocks: partition invariants and model order for ViTs of any depth, other naming styles, the
generic fallback and custom rules."""
import math

import pytest
from torch import nn

from flexmerge_core.planning.blocks import build_blocks
from flexmerge_core.errors import InvalidArgumentError

COMPONENTS = ("ln_1", "attn", "ln_2", "mlp")


def _names_shapes(module):
    names = [n for n, _ in module.named_parameters()]
    return names, {n: tuple(p.shape) for n, p in module.named_parameters()}


def _tiny_vit(layers):
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(image_size=8, patch_size=4, width=8, layers=layers, heads=2, mlp_ratio=2, output_dim=4)


@pytest.fixture(scope="module")
def vit_b32():
    import open_clip

    return _names_shapes(open_clip.create_model("ViT-B-32", pretrained=None).visual)


def _assert_partition(spec, names, shapes):
    """Every name in exactly one block; numels add up."""
    flat = [p for b in spec.blocks for p in b.params]
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
    for block in spec.blocks:
        assert block.numel == sum(math.prod(shapes[p]) for p in block.params)
    assert spec.total_params == sum(math.prod(s) for s in shapes.values())
    assert len(set(spec.names)) == len(spec.names)


def _expected_vit_components(layers, stack="transformer.resblocks"):
    return (["embeddings", "ln_pre"]
            + [f"{stack}.{i}.{c}" for i in range(layers) for c in COMPONENTS] + ["ln_post", "proj"])


def _forward_position(name):
    """Independent reference of a ViT's forward order for one parameter name."""
    if name in ("class_embedding", "positional_embedding") or name.startswith("conv1."):
        return (0, 0, 0)
    if name.startswith("ln_pre."):
        return (1, 0, 0)
    if name.startswith("transformer.resblocks."):
        _, _, index, component = name.split(".")[:4]
        return (2, int(index), COMPONENTS.index(component))
    return (3, 0, 0) if name.startswith("ln_post.") else (4, 0, 0)


@pytest.mark.parametrize("layers", [1, 3, 12])
def test_tiny_vit_component_blocks_in_forward_order(layers):
    names, shapes = _names_shapes(_tiny_vit(layers))
    spec = build_blocks(names, shapes)
    _assert_partition(spec, names, shapes)
    assert spec.granularity == "component"
    assert spec.names == _expected_vit_components(layers)
    assert spec.blocks[0].params == ("class_embedding", "positional_embedding", "conv1.weight")
    assert spec.blocks[-1].params == ("proj",)
    positions = [_forward_position(p) for b in spec.blocks for p in b.params]
    assert positions == sorted(positions)


def test_vit_b32_all_granularities(vit_b32):
    names, shapes = vit_b32
    assert names.index("proj") < names.index("conv1.weight")  # why forward order is not state_dict order
    component = build_blocks(names, shapes, "component")
    layer = build_blocks(names, shapes, "layer")
    parameter = build_blocks(names, shapes, "parameter")
    for spec in (component, layer, parameter):
        _assert_partition(spec, names, shapes)
    assert component.names == _expected_vit_components(12)
    assert layer.names == ["pre"] + [f"transformer.resblocks.{i}" for i in range(12)] + ["post"]
    assert layer.blocks[0].params == ("class_embedding", "positional_embedding", "conv1.weight",
                                      "ln_pre.weight", "ln_pre.bias")
    assert layer.blocks[-1].params == ("ln_post.weight", "ln_post.bias", "proj")
    # parameter blocks are the component blocks' parameters, one by one, in the same order
    assert parameter.names == [p for b in component.blocks for p in b.params]
    assert component.total_params == 87_849_216
    attn = component.blocks[component.names.index("transformer.resblocks.5.attn")]
    assert attn.numel == 768 * 768 * 3 + 768 * 3 + 768 * 768 + 768


def test_order_comes_from_names_not_input_order():
    names, shapes = _names_shapes(_tiny_vit(12))
    shuffled = sorted(names)  # e.g. safetensors key order: resblocks.10 before resblocks.2, proj near the end
    spec = build_blocks(shuffled, shapes, "layer")
    assert spec.names == ["pre"] + [f"transformer.resblocks.{i}" for i in range(12)] + ["post"]
    assert build_blocks(shuffled, shapes).names[0] == "embeddings"
    assert build_blocks(shuffled, shapes).names[-2:] == ["ln_post", "proj"]


def test_full_clip_keeps_towers_apart():
    """Names as in a whole open_clip CLIP (visual tower + text tower), abridged."""
    names = (["positional_embedding", "text_projection", "logit_scale", "visual.class_embedding",
              "visual.conv1.weight", "visual.ln_pre.weight"]
             + [f"visual.transformer.resblocks.{i}.{c}.weight" for i in range(2) for c in COMPONENTS]
             + ["visual.ln_post.weight", "visual.proj"]
             + [f"transformer.resblocks.{i}.{c}.weight" for i in range(2) for c in COMPONENTS]
             + ["token_embedding.weight", "ln_final.weight"])
    shapes = {n: (2,) for n in names}
    spec = build_blocks(names, shapes, "layer")
    _assert_partition(spec, names, shapes)
    assert spec.names == (["visual.pre", "visual.transformer.resblocks.0", "visual.transformer.resblocks.1",
                           "visual.post", "pre", "transformer.resblocks.0", "transformer.resblocks.1", "post"])
    assert spec.blocks[4].params == ("positional_embedding", "token_embedding.weight")
    assert spec.blocks[-1].params == ("ln_final.weight", "text_projection", "logit_scale")


@pytest.mark.parametrize("style", ["blocks", "encoder.layer", "layers"])
def test_other_transformer_naming_styles(style):
    names = ["cls_token", "pos_embed", "patch_embed.proj.weight"]
    for i in (0, 1, 10):
        names += [f"{style}.{i}.norm1.weight", f"{style}.{i}.attn.qkv.weight", f"{style}.{i}.norm2.weight",
                  f"{style}.{i}.mlp.fc1.weight"]
    names += ["norm.weight", "head.weight"]
    shapes = {n: (3,) for n in names}
    spec = build_blocks(names, shapes)
    _assert_partition(spec, names, shapes)
    layers = [f"{style}.{i}.{c}" for i in (0, 1, 10) for c in ("norm1", "attn", "norm2", "mlp")]
    assert spec.names == ["embeddings"] + layers + ["norm", "head"]


class _SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
        self.stages = nn.ModuleList([nn.ModuleDict({"conv": nn.Conv2d(2, 2, 1), "norm": nn.LayerNorm(2)})])
        self.classifier = nn.Linear(2, 5)


def test_fallback_groups_non_transformer_state_dicts_by_module():
    mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    names, shapes = _names_shapes(mlp)
    spec = build_blocks(names, shapes)
    _assert_partition(spec, names, shapes)
    assert spec.names == ["0", "2"] and spec.blocks[0].params == ("0.weight", "0.bias")

    names, shapes = _names_shapes(_SmallCnn())
    component = build_blocks(names, shapes, "component")
    layer = build_blocks(names, shapes, "layer")
    parameter = build_blocks(names, shapes, "parameter")
    for spec in (component, layer, parameter):
        _assert_partition(spec, names, shapes)
    assert component.names == ["features.0", "features.1", "features.3", "stages.0.conv", "stages.0.norm",
                               "classifier"]
    assert layer.names == ["features.0", "features.1", "features.3", "stages.0", "classifier"]
    assert parameter.names == names


def test_custom_rules_first_match_wins_and_groups_expand():
    names, shapes = _names_shapes(_tiny_vit(3))
    rules = [("attention", r"\.attn\."), (r"layer\1", r"resblocks\.(\d+)\."), ("outside", r".")]
    spec = build_blocks(names, shapes, rules=rules)
    _assert_partition(spec, names, shapes)
    assert spec.granularity == "custom"
    # block order = model order of each block's first parameter
    assert spec.names == ["outside", "layer0", "attention", "layer1", "layer2"]
    attention = spec.blocks[2].params
    assert attention and all(".attn." in p for p in attention) and len(attention) == 3 * 4
    assert all(".attn." not in p for p in spec.blocks[1].params)


def test_custom_rule_errors_name_the_culprit():
    names, shapes = _names_shapes(_tiny_vit(1))
    with pytest.raises(InvalidArgumentError, match=r"no block rule matches parameter\(s\) class_embedding, "
                                                   r"positional_embedding, conv1\.weight \(and \d+ more\)"):
        build_blocks(names, shapes, rules=[("mlp", r"\.mlp\.")])
    with pytest.raises(InvalidArgumentError, match=r"regex '\(oops' is invalid"):
        build_blocks(names, shapes, rules=[("x", "(oops")])
    with pytest.raises(InvalidArgumentError, match="must be a"):
        build_blocks(names, shapes, rules=[("only-a-name",)])
    with pytest.raises(InvalidArgumentError, match="replace granularity 'layer'"):
        build_blocks(names, shapes, "layer", rules=[("all", ".")])


def test_argument_errors():
    names, shapes = _names_shapes(_tiny_vit(1))
    with pytest.raises(InvalidArgumentError, match="unknown granularity 'tensor'"):
        build_blocks(names, shapes, "tensor")
    with pytest.raises(InvalidArgumentError, match="'proj' is listed twice"):
        build_blocks(names + ["proj"], shapes)
    with pytest.raises(InvalidArgumentError, match="no shape given for parameter 'extra'"):
        build_blocks(names + ["extra"], shapes)
    with pytest.raises(InvalidArgumentError, match="needs block rules"):
        build_blocks(names, shapes, "custom")


def test_scalar_parameters_count_one():
    spec = build_blocks(["logit_scale", "w"], {"logit_scale": (), "w": (2, 3)}, "parameter")
    assert [b.numel for b in spec.blocks] == [1, 6] and spec.total_params == 7


def _hf_layout(kind, config):
    from flexmerge_core.architectures.registry import state_layout

    layout = state_layout(kind, config.to_dict())
    return list(layout), {n: shape for n, (shape, _) in layout.items()}


def test_language_model_blocks_in_forward_order():
    """Llama, T5 and GPT-2 state_dict names: components in forward order (pre-norms before what they feed,
    T5's lm_head-free tied embeddings first, encoder before decoder), layers per stack."""
    from transformers import GPT2Config, LlamaConfig, T5Config

    names, shapes = _hf_layout("hf_causal_lm", LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                                           num_hidden_layers=2, num_attention_heads=2))
    spec = build_blocks(names, shapes)
    _assert_partition(spec, names, shapes)
    assert spec.names == (["model.embeddings"] + [f"model.layers.{i}.{c}" for i in range(2) for c in
                          ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")]
                          + ["model.norm", "lm_head"])
    assert build_blocks(names, shapes, "layer").names == ["model.pre", "model.layers.0", "model.layers.1",
                                                          "model.post", "post"]
    names, shapes = _hf_layout("hf_seq2seq", T5Config(vocab_size=16, d_model=8, d_kv=4, d_ff=16, num_layers=1,
                                                      num_decoder_layers=1, num_heads=2))
    spec = build_blocks(names, shapes)
    _assert_partition(spec, names, shapes)
    assert spec.names == ["embeddings", "encoder.block.0.layer.0.layer_norm", "encoder.block.0.layer.0.SelfAttention",
                          "encoder.block.0.layer.1.layer_norm", "encoder.block.0.layer.1.DenseReluDense",
                          "encoder.final_layer_norm", "decoder.block.0.layer.0.layer_norm",
                          "decoder.block.0.layer.0.SelfAttention", "decoder.block.0.layer.1.layer_norm",
                          "decoder.block.0.layer.1.EncDecAttention", "decoder.block.0.layer.2.layer_norm",
                          "decoder.block.0.layer.2.DenseReluDense", "decoder.final_layer_norm"]
    assert spec.blocks[0].params == ("shared.weight",)
    names, shapes = _hf_layout("hf_causal_lm", GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=16,
                                                          n_positions=8, bos_token_id=0, eos_token_id=0))
    assert build_blocks(names, shapes).names == ["transformer.embeddings", "transformer.h.0.ln_1", "transformer.h.0.attn",
                                                 "transformer.h.0.ln_2", "transformer.h.0.mlp", "transformer.ln_f"]
