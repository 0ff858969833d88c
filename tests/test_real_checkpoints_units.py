"""The pieces behind `zoo import`: pickle refusal, prefix detection, tensor-file data, templates, zero-shot cache."""
import json

import pytest
import torch
from safetensors.torch import save_file

from flexmerge_core.cli import main
from flexmerge_core.errors import InvalidArgumentError, ZooError
from flexmerge_core.importers.imagefolder import find_task_data, load_task_data
from flexmerge_core.architectures.open_clip import eval_transform, model_config
from flexmerge_core.importers.source_files import read_state_dict
from flexmerge_core.importers.visual_keys import split_visual
from flexmerge_core.importers.zeroshot import load_templates, named_templates

LAYOUT = {"conv1.weight": ((4, 3, 2, 2), torch.float32), "proj": ((4, 2), torch.float32)}


class _Payload:
    """Unpickling this object calls open(path, "w"): the side effect a malicious checkpoint would have."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, capsys):
    side_effect = tmp_path / "pwned.txt"
    src = tmp_path / "src"
    for task in ("A", "B"):
        (src / task).mkdir(parents=True)
        torch.save({"weights": _Payload(side_effect)}, src / task / "finetuned.pt")
        torch.save({"weights": _Payload(side_effect)}, src / task / "zeroshot.pt")
    code = main(["zoo", "import", str(src), "--out", str(tmp_path / "zoo"), "--model", "ViT-B-32"])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-pickle" in err and "pickled" in err and "zeroshot.pt" in err
    with pytest.raises(ZooError, match="runs code"):
        read_state_dict(src / "A" / "finetuned.pt", "task 'A'")
    assert not side_effect.exists() and not (tmp_path / "zoo").exists()


def test_pickled_module_and_wrapped_state_dicts_become_flat_tensors(tmp_path):
    """A pickled module is rebuilt structurally (no --trust-pickle needed), or unpickled when trusted."""
    linear = torch.nn.Linear(3, 2)
    torch.save(linear, tmp_path / "module.pt")
    torch.save({"state_dict": linear.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for name, trust in (("module.pt", False), ("module.pt", True), ("wrapped.pt", False)):
        state = read_state_dict(tmp_path / name, "head", trust_pickle=trust)
        assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], linear.weight.detach())
    torch.save({"weight": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ZooError, match="no state dict of named tensors"):
        read_state_dict(tmp_path / "list.pt", "head")
    with pytest.raises(ZooError, match="not found"):
        read_state_dict(tmp_path / "missing.pt", "head")


@pytest.mark.parametrize("prefix", ["", "visual.", "model.visual.", "module.model.visual."])
def test_visual_prefix_is_detected_and_the_clip_rest_kept(prefix, tmp_path):
    torch.manual_seed(0)
    tower = {n: torch.randn(shape) for n, (shape, _) in LAYOUT.items()}
    clip = prefix[: -len("visual.")] if prefix.endswith("visual.") else None
    state = {prefix + n: t for n, t in tower.items()}
    state["optimizer_step"] = torch.tensor(5)
    if clip is not None:
        state[clip + "text_projection"] = torch.ones(2, 2)
    split = split_visual(state, LAYOUT, tmp_path / "f.pt", "task 'A'")
    assert split.prefix == prefix and list(split.visual) == list(LAYOUT)
    assert all(torch.equal(split.visual[n], tower[n]) for n in LAYOUT)
    # a whole CLIP saved bare ("visual." prefix) claims every other tensor as its text side
    expected_rest = set() if clip is None else {"text_projection"} | ({"optimizer_step"} if clip == "" else set())
    assert set(split.clip_rest) == expected_rest
    assert split.ignored == (0 if clip == "" else 1)


def test_visual_split_names_the_missing_or_misshapen_tensor(tmp_path):
    with pytest.raises(ZooError, match=r"closest prefix 'visual\.' it lacks 'visual\.proj'"):
        split_visual({"visual.conv1.weight": torch.zeros(4, 3, 2, 2)}, LAYOUT, tmp_path / "f.pt", "task 'A'")
    with pytest.raises(ZooError, match=r"'model\.visual\.proj' of task 'A' has shape \[2, 4\]"):
        split_visual({"model.visual.conv1.weight": torch.zeros(4, 3, 2, 2), "model.visual.proj": torch.zeros(2, 4)},
                     LAYOUT, tmp_path / "f.pt", "task 'A'")


def test_open_clip_model_config_is_checked():
    assert model_config({"name": "ViT-B-32"})["vision_cfg"]["patch_size"] == 32
    assert model_config({"name": "ViT-B-32", "quick_gelu": True})["quick_gelu"] is True
    with pytest.raises(ZooError, match="not an open_clip model name"):
        model_config({"name": "ViT-Q-99"})
    with pytest.raises(ZooError, match="takes config"):
        model_config({"name": "ViT-B-32", "width": 3})


def test_tensor_file_data_raw_pixels_are_preprocessed_with_open_clips_transform(tmp_path):
    import open_clip
    from PIL import Image

    torch.manual_seed(0)
    raw = torch.randint(0, 256, (3, 20, 30, 3), dtype=torch.uint8)
    save_file({"images": raw, "labels": torch.tensor([0, 2, 1])}, str(tmp_path / "Cars.safetensors"))
    (tmp_path / "Cars.classes.txt").write_text("audi\nbmw\ncitroen\n")
    transform = eval_transform({"name": "ViT-B-32"})
    found = find_task_data(tmp_path, "cars")   # case-insensitive match
    data = load_task_data(found, transform, 224)
    reference = open_clip.image_transform(224, is_train=False)
    expected = torch.stack([reference(Image.fromarray(img.numpy())) for img in raw])
    torch.testing.assert_close(data.images, expected, rtol=0, atol=1e-6)
    assert data.classes == ["audi", "bmw", "citroen"] and data.labels.tolist() == [0, 2, 1]
    save_file({"images": torch.zeros(2, 3, 32, 32), "labels": torch.tensor([0, 1])}, str(tmp_path / "Bad.safetensors"))
    with pytest.raises(ZooError, match=r"must be \[N, 3, 224, 224\]"):
        load_task_data(tmp_path / "Bad.safetensors", transform, 224)
    assert find_task_data(tmp_path, "Planes") is None


def test_templates_from_names_lists_and_files(tmp_path):
    assert named_templates("simple")[0] == "itap of a {}." and len(named_templates("openai")) == 80
    assert load_templates(None) == named_templates("simple")
    (tmp_path / "t.json").write_text(json.dumps(["a {} here", "the {}"]))
    (tmp_path / "t.txt").write_text("a {} here\n\nthe {}\n")
    assert load_templates(str(tmp_path / "t.json")) == load_templates(str(tmp_path / "t.txt")) == ["a {} here", "the {}"]
    with pytest.raises(InvalidArgumentError, match="exactly once"):
        load_templates(["no placeholder"])
    with pytest.raises(InvalidArgumentError, match="neither"):
        load_templates("fancy")


def test_zeroshot_heads_are_cached_on_disk_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    import open_clip

    from flexmerge_core.importers import zeroshot

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    text = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    tower = zeroshot.TextTower({"name": "ViT-B-32"}, clip, text)
    head = zeroshot.zeroshot_head(tower, ["sea_lion", "dog"], ["a {}.", "the {} here"])
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():   # reference: CLIP's zero-shot recipe, written out
        rows = []
        for name in ("sea lion", "dog"):
            emb = clip.encode_text(tokenizer([f"a {name}.", f"the {name} here"]))
            mean = (emb / emb.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(clip.logit_scale.exp() * mean / mean.norm())
    torch.testing.assert_close(head["weight"], torch.stack(rows), rtol=1e-4, atol=1e-4)
    assert torch.equal(head["bias"], torch.zeros(2))
    [entry] = (tmp_path / "zeroshot").iterdir()
    with monkeypatch.context() as patched:
        patched.setattr(zeroshot, "_encode", lambda *a: pytest.fail("a cached head was re-encoded"))
        assert torch.equal(zeroshot.zeroshot_head(tower, ["sea_lion", "dog"], ["a {}.", "the {} here"])["weight"],
                           head["weight"])
    entry.write_bytes(b"damaged")
    assert torch.equal(zeroshot.zeroshot_head(tower, ["sea_lion", "dog"], ["a {}.", "the {} here"])["weight"],
                       head["weight"])
    assert zeroshot.TextTower.from_clip_rest({"name": "ViT-B-32"}, {}) is None


TINY = {"image_size": 8, "patch_size": 4, "width": 16, "layers": 1, "heads": 2, "mlp_ratio": 2, "output_dim": 4}


def test_a_hand_written_manifest_with_prefixed_torch_files_is_imported_like_the_research_layout(tmp_path, capsys):
    import open_clip
    from open_clip.transformer import VisionTransformer
    from PIL import Image

    from flexmerge_core.zoo import open_zoo

    torch.manual_seed(0)
    src = tmp_path / "src"
    (src / "img" / "B" / "cat").mkdir(parents=True)
    (src / "img" / "B" / "dog").mkdir(parents=True)
    pre = VisionTransformer(**TINY).state_dict()
    states = {t: {k: v + 0.1 * torch.randn_like(v) for k, v in pre.items()} for t in ("A", "B")}
    torch.save({**{f"visual.{k}": v for k, v in pre.items()}, "text_projection": torch.ones(4, 4)}, src / "clip.pt")
    torch.save({f"model.visual.{k}": v for k, v in states["A"].items()}, src / "a.pt")
    save_file(states["B"], str(src / "b.safetensors"))
    torch.save({"weight": torch.randn(2, 4)}, src / "head_a.pt")
    a_images = torch.randn(2, 3, 8, 8)
    save_file({"images": a_images, "labels": torch.tensor([1, 0])}, str(src / "a_data.safetensors"))
    for i, cls in enumerate(("cat", "dog")):
        Image.new("RGB", (12, 10), (40 + 150 * i, 90, 200 - 150 * i)).save(src / "img" / "B" / cls / "x.png")
    manifest = {"format": "flexmerge-zoo/1", "architecture": {"kind": "open_clip_vit", "config": TINY},
                "pretrained": "clip.pt", "head_input": "raw",
                "tasks": [{"name": "A", "checkpoint": "a.pt", "head": "head_a.pt", "data": "a_data.safetensors",
                           "classes": ["x", "y"]},
                          {"name": "B", "checkpoint": "b.safetensors", "data": "img/B"}]}
    (src / "zoo.json").write_text(json.dumps(manifest))
    out = tmp_path / "zoo"
    assert main(["zoo", "import", str(src), "--out", str(out), "--model", "ViT-B-32"]) == 2
    assert "drop --model" in capsys.readouterr().err
    assert main(["zoo", "import", str(src), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prefixes"] == {"clip.pt": "visual.", "a.pt": "model.visual.", "b.safetensors": ""}
    assert report["heads"] == {"A": "file", "B": "none"} and report["data"] == {"A": 2, "B": 2}
    zoo = open_zoo(out)
    assert zoo.param_names == list(pre) and zoo.classes == [["x", "y"], ["cat", "dog"]]
    for t, task in enumerate(("A", "B")):
        assert all(torch.equal(zoo.task_tensor(t, n), states[task][n]) for n in pre)
    assert all(torch.equal(zoo.pretrained_tensor(n), pre[n]) for n in pre)
    assert torch.equal(zoo.heldout(0)[0], a_images) and torch.equal(zoo.head(0)["bias"], torch.zeros(2))
    transform = open_clip.image_transform(8, is_train=False)
    expected = torch.stack([transform(Image.open(src / "img" / "B" / c / "x.png").convert("RGB")) for c in ("cat", "dog")])
    torch.testing.assert_close(zoo.heldout(1)[0], expected, rtol=0, atol=1e-6)
    assert zoo.heldout(1)[1].tolist() == [0, 1]
