"""Task-vectors releases as users hold them: `torch.save(ImageEncoder)` pickles whose classes
(`src.modeling.ImageEncoder` wrapping a CLIP under `model`, `src.modeling.ClassificationHead` with
weight/bias/normalize) are not importable here. They import WITHOUT --trust-pickle (structural reader),
the zoo records the format `task_vectors_pickle`, and the tensors are exactly the saved ones.
"""
import json

import torch
from safetensors.torch import save_file

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
    for name in ("A", "B"):
        save_file({"images": torch.randn(12, 3, 16, 16), "labels": torch.randint(0, 3, (12,))},
                  str(src / f"data_{name}.safetensors"))
    manifest = {"format": "flexmerge-zoo/1", "architecture": {"kind": "open_clip_vit", "config": TOWER},
                "pretrained": "pretrained.pt", "head_input": "normalized",
                "tasks": [{"name": t, "checkpoint": f"{t}.pt", "head": f"head_{t}.pt", "data": f"data_{t}.safetensors"}
                          for t in ("A", "B")]}
    (src / "zoo.json").write_text(json.dumps(manifest))
    assert main(["zoo", "import", str(src), "--out", str(tmp_path / "zoo")]) == 0
    zoo = open_zoo(tmp_path / "zoo")
    assert zoo.recipe["source"]["format"] == "task_vectors_pickle"
    assert set(zoo.recipe["source"]["read_as"].values()) == {"pickle"}
    for t, name in enumerate(("A", "B")):
        expected = encoders[name].model.visual.state_dict()
        assert all(torch.equal(zoo.task_tensor(t, n), expected[n]) for n in zoo.param_names)
        assert torch.equal(zoo.head(t)["weight"], heads[name].weight.detach())


def test_task_vectors_zoo_plans_merges_and_exports_a_model_open_clip_reloads(tmp_path, private_cache, one_thread,
                                                                            capsys):
    """import -> plan -> curve -> export; the exported task model loads strictly into open_clip's tower
    and gives the engine's own features."""
    from open_clip.transformer import VisionTransformer
    from safetensors.torch import load_file

    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.forward import StagedEncoder
    from flexmerge_core.pipeline import Pipeline, PlanSettings

    test_task_vectors_pickles_import_without_trust_pickle(tmp_path, private_cache, one_thread)
    zoo_path = str(tmp_path / "zoo")
    capsys.readouterr()   # the import's report
    assert main(["curve", "--zoo", zoo_path, "--algorithm", "ta", "--sizes", "1,2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["size"] for r in rows] == [1.0, 2.0] and set(rows[0]["accuracy"]) == {"A", "B"}
    out = tmp_path / "A-1x.safetensors"
    assert main(["export", "--zoo", zoo_path, "--algorithm", "ta", "--size", "1", "--task", "A", "--out", str(out)]) == 0
    tower = VisionTransformer(**TOWER).eval()
    tower.load_state_dict(load_file(str(out)), strict=True)
    zoo = open_zoo(zoo_path)
    pipeline = Pipeline(zoo, PlanSettings(algorithm="ta"))
    deployment = build_deployment(zoo, pipeline.plan, pipeline.algorithm, 1.0, merger=pipeline.merger())
    runner = StagedEncoder(zoo.build_encoder(), device="cpu", adapter=zoo.architecture)
    images = torch.randn(5, 3, 16, 16)
    engine, _ = runner.features(runner.split(deployment.encoder_state_dict(0)), images)
    with torch.no_grad():
        assert torch.allclose(tower(images), engine, atol=1e-6)
