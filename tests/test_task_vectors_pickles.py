"""Task-vectors releases as users hold them: `torch.save(ImageEncoder)` pickles whose classes
(`src.modeling.ImageEncoder` wrapping a CLIP under `model`, `src.modeling.ClassificationHead` with
weight/bias/normalize) are not importable here. They import WITHOUT --trust-pickle (structural reader),
the zoo records the format `task_vectors_pickle`, and the tensors are exactly the saved ones.
"""
import json
import sys
import types

import torch

from flexmerge_core.cli import main
from flexmerge_core.zoo import open_zoo

TOWER = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 2.0, "output_dim": 8}


def _modeling_module():
    """A stand-in for the authors' `src.modeling`, importable only while the files are saved."""
    module = types.ModuleType("src.modeling")

    class CLIPLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            from open_clip.transformer import VisionTransformer

            self.visual = VisionTransformer(**TOWER)
            self.logit_scale = torch.nn.Parameter(torch.ones([]))

    class ImageEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = CLIPLike()
            self.train_preprocess = None

    class ClassificationHead(torch.nn.Linear):
        def __init__(self, normalize, weights):
            super().__init__(weights.shape[1], weights.shape[0])
            self.normalize = normalize
            self.weight = torch.nn.Parameter(weights.clone())
            self.bias = torch.nn.Parameter(torch.zeros(weights.shape[0]))

    for cls in (CLIPLike, ImageEncoder, ClassificationHead):
        cls.__module__, cls.__qualname__ = "src.modeling", cls.__name__
        setattr(module, cls.__name__, cls)
    return module


def test_task_vectors_pickles_import_without_trust_pickle(tmp_path, monkeypatch, private_cache, one_thread):
    modeling = _modeling_module()
    monkeypatch.setitem(sys.modules, "src", types.ModuleType("src"))
    monkeypatch.setitem(sys.modules, "src.modeling", modeling)
    torch.manual_seed(0)
    src = tmp_path / "src"
    src.mkdir()
    encoders, heads = {}, {}
    for name in ("pretrained", "A", "B"):
        encoders[name] = modeling.ImageEncoder().eval()
        torch.save(encoders[name], src / f"{name}.pt")
        if name != "pretrained":
            heads[name] = modeling.ClassificationHead(True, torch.randn(3, 8))
            torch.save(heads[name], src / f"head_{name}.pt")
    monkeypatch.delitem(sys.modules, "src.modeling")   # the authors' code is not importable at import time
    monkeypatch.delitem(sys.modules, "src")
    manifest = {"format": "flexmerge-zoo/1", "architecture": {"kind": "open_clip_vit", "config": TOWER},
                "pretrained": "pretrained.pt", "head_input": "normalized",
                "tasks": [{"name": t, "checkpoint": f"{t}.pt", "head": f"head_{t}.pt"} for t in ("A", "B")]}
    (src / "zoo.json").write_text(json.dumps(manifest))
    assert main(["zoo", "import", str(src), "--out", str(tmp_path / "zoo")]) == 0
    zoo = open_zoo(tmp_path / "zoo")
    assert zoo.recipe["source"]["format"] == "task_vectors_pickle"
    assert set(zoo.recipe["source"]["read_as"].values()) == {"pickle"}
    for t, name in enumerate(("A", "B")):
        expected = encoders[name].model.visual.state_dict()
        assert all(torch.equal(zoo.task_tensor(t, n), expected[n]) for n in zoo.param_names)
        assert torch.equal(zoo.head(t)["weight"], heads[name].weight.detach())
