"""Task-vectors releases as users hold them: `torch.save(ImageEncoder)` pickles whose classes
(`src.modeling.ImageEncoder` wrapping a CLIP under `model`, `src.modeling.ClassificationHead` with
weight/bias/normalize) are not importable here. They import WITHOUT --trust-pickle (structural reader),
the zoo records the format `task_vectors_pickle`, and the tensors are exactly the saved ones.
"""
import json

import torch

from flexmerge_core.cli import main
from task_vectors_modeling import ClassificationHead, ImageEncoder, authors_modeling
from flexmerge_core.zoo import open_zoo

TOWER = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 2.0, "output_dim": 8}


class CLIPLike(torch.nn.Module):
    """What the release's ImageEncoder wraps: a CLIP model (its text tower does not matter here)."""

    def __init__(self):
        super().__init__()
        from open_clip.transformer import VisionTransformer

        self.visual = VisionTransformer(**TOWER)
        self.logit_scale = torch.nn.Parameter(torch.ones([]))


def test_task_vectors_pickles_import_without_trust_pickle(tmp_path, private_cache, one_thread):
    torch.manual_seed(0)
    src = tmp_path / "src"
    src.mkdir()
    encoders, heads = {}, {}
    with authors_modeling(CLIPLike):
        for name in ("pretrained", "A", "B"):
            encoders[name] = ImageEncoder(CLIPLike()).eval()
            torch.save(encoders[name], src / f"{name}.pt")
            if name != "pretrained":
                heads[name] = ClassificationHead(True, torch.randn(3, 8))
                torch.save(heads[name], src / f"head_{name}.pt")
    # the authors' code is not importable from here on
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
