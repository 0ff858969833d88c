"""Real users' checkpoints end to end: an open_clip ViT-B-32 zoo in the research layout, imported with
`zoo import`, planned, merged at 1x/2x/3x, evaluated, exported and reloaded into a fresh open_clip tower.

The source folder mimics what practitioners have: `<Task>/zeroshot.pt` is a whole CLIP state dict
(visual tower under `visual.`, plus the text tower), the fine-tuned files come as a `model.visual.`-
prefixed state dict with text leftovers (task-vectors style), a bare tower state dict, and a pickled
whole module; heads as a state dict, a pickled `nn.Linear`, or none (zero-shot from class names).
Every expected number is computed here with plain open_clip modules, independently of the engine.
"""
import contextlib
import io
import json
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flexmerge_core.cli import main
from flexmerge_core.zoo import open_zoo

pytestmark = pytest.mark.slow

MODEL = "ViT-B-32"
TASKS = ["Alpha", "Beta", "Gamma"]
CLASSES = {"Alpha": ["red_thing", "blue_thing"], "Beta": ["dark", "light"], "Gamma": ["cat", "dog"]}
TEMPLATES = ["a photo of a {}.", "a drawing of the {}."]


def _write_images(root, rng):
    """Two tiny images per class, class-dependent colours, png and jpg."""
    for t, task in enumerate(TASKS):
        for c, name in enumerate(CLASSES[task]):
            folder = root / task / name
            folder.mkdir(parents=True)
            for i, suffix in enumerate((".png", ".jpg")):
                base = torch.tensor([60 + 150 * c, 40 + 60 * t, 200 - 150 * c], dtype=torch.float32)
                pixels = (base + 30 * torch.rand(30, 40, 3, generator=rng)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"img{i}{suffix}")


def _preprocessed(root, task):
    """Reference preprocessing: open_clip's inference transform, images in class-then-file order."""
    import open_clip

    transform = open_clip.image_transform(224, is_train=False)
    images, labels = [], []
    for c, name in enumerate(sorted(CLASSES[task])):
        for file in sorted((root / task / name).iterdir()):
            images.append(transform(Image.open(file).convert("RGB")))
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


_TOWER = []


def _visual(state):
    """One open_clip ViT-B-32 image tower (built once), with `state` loaded strictly."""
    import open_clip

    if not _TOWER:
        _TOWER.append(open_clip.create_model(MODEL, pretrained=None).visual.eval())
    _TOWER[0].load_state_dict(state, strict=True)
    return _TOWER[0]


def _logits(tower, head, images):
    with torch.no_grad():
        features = F.normalize(tower(images), dim=-1)
    return features @ head["weight"].t() + head["bias"]


def _zeroshot_reference(clip, classes):
    """Textbook CLIP zero-shot weights: mean of normalised prompt embeddings, renormalised, * exp(scale)."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(MODEL)
    rows = []
    with torch.no_grad():
        for name in sorted(classes):
            emb = clip.encode_text(tokenizer([t.format(name.replace("_", " ")) for t in TEMPLATES]))
            mean = (emb / emb.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows) * clip.logit_scale.exp()


class Sources:
    pass


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Write the research-layout folder, run `zoo import` through the CLI, return everything the tests need."""
    import open_clip

    torch.set_num_threads(2)
    cache = tmp_path_factory.mktemp("cache")
    old_cache = os.environ.get("FLEXMERGE_CACHE")
    os.environ["FLEXMERGE_CACHE"] = str(cache)
    root = tmp_path_factory.mktemp("research")
    src, data, out = root / "checkpoints", root / "data", root / "zoo"
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    clip = open_clip.create_model(MODEL, pretrained=None).eval()
    full = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    pretrained = {k[len("visual."):]: v for k, v in full.items() if k.startswith("visual.")}
    shared = {k: torch.randn_like(v) for k, v in pretrained.items()}
    _write_images(data, rng)
    s = Sources()
    s.pretrained, s.finetuned, s.heads, s.heldout = pretrained, {}, {}, {}
    features = {}
    (src / TASKS[0]).mkdir(parents=True)
    torch.save(full, src / TASKS[0] / "zeroshot.pt")
    for t, task in enumerate(TASKS):
        (src / task).mkdir(exist_ok=True)
        if t:
            os.link(src / TASKS[0] / "zeroshot.pt", src / task / "zeroshot.pt")
        state = {k: v + 0.01 * v.std().clamp_min(0.01) * (shared[k] + torch.randn_like(v))
                 for k, v in pretrained.items()}
        s.finetuned[task] = state
        s.heldout[task] = _preprocessed(data, task)
        tower = _visual(state)
        if task == "Alpha":     # task-vectors style: model.visual. prefix and text leftovers
            saved = {f"model.visual.{k}": v for k, v in state.items()}
            saved["model.token_embedding.weight"] = full["token_embedding.weight"]
            torch.save(saved, src / task / "finetuned.pt")
        elif task == "Beta":    # bare tower state dict
            torch.save(state, src / task / "finetuned.pt")
        else:                   # a pickled whole module
            torch.save(tower, src / task / "finetuned.pt")
        images, labels = s.heldout[task]
        with torch.no_grad():
            features[task] = F.normalize(tower(images), dim=-1)
        if task != "Gamma":     # heads: class means of the fine-tuned features (so fine-tuned accuracy is high)
            weight = torch.stack([F.normalize(features[task][labels == c].mean(0), dim=0) for c in range(2)]) * 100
            s.heads[task] = {"weight": weight, "bias": torch.tensor([0.5, -0.5])}
            if task == "Alpha":
                torch.save(s.heads[task], src / f"head_{task}.pt")
            else:
                linear = torch.nn.Linear(512, 2)
                linear.load_state_dict(s.heads[task])
                torch.save(linear, src / f"head_{task}.pt")
    s.heads["Gamma"] = {"weight": _zeroshot_reference(clip, CLASSES["Gamma"]), "bias": torch.zeros(2)}
    s.finetuned_acc = {t: float(((features[t] @ s.heads[t]["weight"].t() + s.heads[t]["bias"]).argmax(-1)
                                 == s.heldout[t][1]).float().mean()) for t in TASKS}
    (root / "templates.json").write_text(json.dumps(TEMPLATES))
    argv = ["zoo", "import", str(src), "--out", str(out), "--model", MODEL, "--data", str(data),
            "--templates", str(root / "templates.json"), "--trust-pickle", "--json"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        s.exit_code = main(argv)
    s.report = json.loads(stdout.getvalue()) if s.exit_code == 0 else None
    s.src, s.out, s.root, s.clip = src, out, root, clip
    yield s
    if old_cache is None:
        os.environ.pop("FLEXMERGE_CACHE", None)
    else:
        os.environ["FLEXMERGE_CACHE"] = old_cache


def test_import_detects_prefixes_converts_to_safetensors_and_keeps_every_tensor(imported):
    assert imported.exit_code == 0
    report = imported.report
    assert report["prefixes"] == {"Alpha/zeroshot.pt": "visual.", "Beta/zeroshot.pt": "visual.",
                                  "Gamma/zeroshot.pt": "visual.", "Alpha/finetuned.pt": "model.visual.",
                                  "Beta/finetuned.pt": "", "Gamma/finetuned.pt": ""}
    assert report["ignored_tensors"]["Alpha/finetuned.pt"] == 1
    assert report["heads"] == {"Alpha": "file", "Beta": "file", "Gamma": "zero-shot"}
    assert report["data"] == {t: 4 for t in TASKS} and report["text_tower"] is True
    files = sorted(p.suffix for p in imported.out.rglob("*") if p.is_file())
    assert set(files) == {".json", ".safetensors"}
    zoo = open_zoo(imported.out)
    assert zoo.manifest.architecture_kind == "open_clip_model" and zoo.head_input == "normalized"
    assert zoo.param_names == list(imported.pretrained) and zoo.task_names == TASKS
    for t, task in enumerate(TASKS):
        assert all(torch.equal(zoo.task_tensor(t, n), imported.finetuned[task][n]) for n in zoo.param_names)
        images, labels = zoo.heldout(t)
        ref_images, ref_labels = imported.heldout[task]
        torch.testing.assert_close(images, ref_images, rtol=0, atol=1e-6)
        assert torch.equal(labels, ref_labels)
        assert zoo.classes[t] == sorted(CLASSES[task])
        head = zoo.head(t)
        torch.testing.assert_close(head["weight"], imported.heads[task]["weight"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(head["bias"], imported.heads[task]["bias"])
    assert all(torch.equal(zoo.pretrained_tensor(n), imported.pretrained[n]) for n in zoo.param_names)


def test_plan_merge_evaluate_export_and_strict_reload(imported, tmp_path, monkeypatch):
    from open_clip import create_model
    from safetensors.torch import load_file

    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.deployment.deploy import GroupStore, build_deployment
    from flexmerge_core.evaluation.evaluate import evaluate_deployment
    from flexmerge_core.deployment.group_cache import GroupResultCache
    from flexmerge_core.deployment.export import export, head_path
    from flexmerge_core.deployment.merge import GroupMerger
    from flexmerge_core.planning.plan import build_plan

    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path / "cache"))
    with monkeypatch.context() as patched:
        patched.setattr(torch, "load", lambda *a, **k: pytest.fail("a safetensors zoo must never unpickle"))
        zoo = open_zoo(imported.out)
        spec = build_blocks(zoo.param_names, zoo.param_shapes, "component")
        algorithm = get_algorithm("ta")
        plan = build_plan(zoo, spec, algorithm)
    assert plan.max_size == 3 and plan.min_size == pytest.approx(1.0)
    encoder = zoo.build_encoder()
    assert type(encoder).__name__ == "VisionTransformer"
    with torch.no_grad():   # the zoo's encoder is CLIP's own image tower with the pretrained weights
        image = imported.heldout["Alpha"][0][:1]
        torch.testing.assert_close(encoder(image), imported.clip.encode_image(image), rtol=1e-4, atol=1e-4)
    finetuned_acc = imported.finetuned_acc
    # groups merged once; the disk cache lets export() below reuse them instead of merging again
    store = GroupStore(zoo, spec, algorithm, GroupMerger(zoo, spec, algorithm, cache=GroupResultCache()))
    for budget in (1, 2, 3):
        deployment = build_deployment(zoo, plan, algorithm, budget, store=store)
        assert deployment.size <= budget + 1e-9 and deployment.size >= budget - 0.5
        result = evaluate_deployment(zoo, deployment)
        assert result.finetuned == pytest.approx(finetuned_acc)
        for t, task in enumerate(TASKS):
            state = deployment.encoder_state_dict(t)
            if budget == 1:   # TA reference: pretrained + 1.5 * mean task vector, every tensor
                name = "transformer.resblocks.3.mlp.c_fc.weight"
                mean = torch.stack([imported.finetuned[k][name] - imported.pretrained[name] for k in TASKS]).mean(0)
                torch.testing.assert_close(state[name], imported.pretrained[name] + 1.5 * mean, rtol=1e-5, atol=1e-6)
            if budget == 3:   # the fine-tuned models bit for bit: their accuracy is checked below
                assert all(torch.equal(state[n], imported.finetuned[task][n]) for n in zoo.param_names)
                continue
            images, labels = imported.heldout[task]
            expected = float((_logits(_visual(state), imported.heads[task], images).argmax(-1) == labels)
                             .float().mean())
            assert result.accuracy[task] == pytest.approx(expected)
        if budget == 3:
            assert result.accuracy == pytest.approx(finetuned_acc)
    out = tmp_path / "beta_2x.safetensors"
    export(zoo, spec, plan, algorithm, 2, out, task="Beta")
    fresh = create_model(MODEL, pretrained=None).visual.eval()
    fresh.load_state_dict(load_file(str(out)), strict=True)
    expected = build_deployment(zoo, plan, algorithm, 2, store=store).encoder_state_dict(1)
    assert all(torch.equal(fresh.state_dict()[n], expected[n]) for n in expected)
    assert torch.equal(load_file(str(head_path(out)))["weight"], zoo.head(1)["weight"])
