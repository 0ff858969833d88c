"""`python -m flexmerge_core zoo info`: text and JSON output, exit code 2 with one line on a bad zoo."""
import json
import math

import pytest
import torch

from flexmerge_core.cli import main
from flexmerge_core.zoo import write_zoo

CONFIG = dict(image_size=8, patch_size=4, width=8, layers=2, heads=2, mlp_ratio=2, output_dim=4)


@pytest.fixture
def zoo_dir(tmp_path):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    pretrained = VisionTransformer(**CONFIG).state_dict()
    tasks = [{"name": name, "state_dict": {k: v + 0.1 for k, v in pretrained.items()},
              "head": {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "classes": ["x", "y"],
              "finetuned_accuracy": acc}
             for name, acc in [("digits", 0.93), ("shapes", 0.875), ("noise", None)]]
    report = {"avg_finetuned_accuracy": 0.9025, "merged_1x_normalized_accuracy": 0.61, "note": "demo"}
    root = write_zoo(tmp_path / "myzoo", {"kind": "open_clip_vit", "config": CONFIG}, pretrained, tasks,
                     recipe={"seed": 0, "report": report}, unmerged=[r"^ln_post\."])
    return root, pretrained


def test_info_json(zoo_dir, capsys):
    root, pretrained = zoo_dir
    assert main(["zoo", "info", "--zoo", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in out["tasks"]] == ["digits", "shapes", "noise"]
    assert out["finetuned_accuracy"] == {"digits": 0.93, "shapes": 0.875}
    merged = {k: v for k, v in pretrained.items() if not k.startswith("ln_post.")}
    assert out["merged_tensors"] == len(merged)
    assert out["merged_params"] == sum(math.prod(v.shape) for v in merged.values())
    assert out["unmerged_tensors"] == ["ln_post.weight", "ln_post.bias"]
    # component: embeddings, ln_pre, 2 layers x 4 components, proj (ln_post is not merged)
    assert out["blocks"] == {"layer": 4, "component": 11, "parameter": len(merged)}
    assert out["report"] == {"avg_finetuned_accuracy": 0.9025, "merged_1x_normalized_accuracy": 0.61,
                             "note": "demo"}
    assert out["tasks"][0] == {"name": "digits", "finetuned_accuracy": 0.93, "num_classes": 2,
                               "has_head": True, "has_heldout_data": False, "kind": "image_classification",
                               "metric": "accuracy"}


def test_info_text(zoo_dir, capsys):
    root, _ = zoo_dir
    assert main(["zoo", "info", "--zoo", str(root)]) == 0
    text = capsys.readouterr().out
    assert "digits: fine-tuned accuracy 0.9300, 2 classes" in text
    assert "noise: fine-tuned accuracy n/a" in text
    assert "blocks: layer 4, component 11, parameter" in text
    assert "merged_1x_normalized_accuracy: 0.6100" in text and "note: demo" in text


def test_bad_zoo_exits_2_with_one_line(zoo_dir, capsys):
    root, _ = zoo_dir
    (root / "tasks" / "shapes.safetensors").unlink()
    assert main(["zoo", "info", "--zoo", str(root), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "shapes.safetensors" in lines[0]
    assert "task 'shapes'" in lines[0]
