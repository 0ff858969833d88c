"""HuggingFace CLIP zoos end to end, offline, with tiny models and datasets in the real on-disk formats.

A pretrained CLIPModel + 3 fine-tuned CLIPVisionModel folders (one sharded) written by save_pretrained,
named by a YAML spec (folder paths and hub ids in a hub cache laid out as huggingface_hub lays it out),
held-out data as a parquet file and a save_to_disk folder. Every expected number comes from transformers'
own classes (CLIPModel.get_image_features, CLIPImageProcessorPil, CLIPTokenizer), not from the engine.
"""
import contextlib
import io
import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from hf_zoo_files import CLASSES, PREPROCESSOR, hf_dataset, images_and_labels, write_hf_zoo

from flexmerge_core.cli import main

TEMPLATES = ["a photo of a {}.", "a {} photo."]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Models (pretrained also in a fake hub cache), datasets (parquet, save_to_disk) and the images used."""
    root = tmp_path_factory.mktemp("hf")
    folders = write_hf_zoo(root / "src")
    hub = root / "hub"
    snapshot = hub / "models--someone--tiny-clip" / "snapshots" / "abc123"
    shutil.copytree(folders["_pretrained_"], snapshot)
    (hub / "models--someone--tiny-clip" / "refs").mkdir()
    (hub / "models--someone--tiny-clip" / "refs" / "main").write_text("abc123")
    data, raw = root / "data", {}
    for i, (task, classes) in enumerate(CLASSES.items()):
        raw[task] = images_and_labels(9, len(classes), seed=i)
        dataset = hf_dataset(*raw[task], classes)
        if task == "beta":
            dataset.save_to_disk(str(data / task))
        else:
            dataset.to_parquet(str(data / f"{task}.parquet"))
    (root / "templates.json").write_text(json.dumps(TEMPLATES))
    return {"root": root, "folders": folders, "hub": hub, "data": data, "raw": raw}


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _spec(sources, models=None, max_examples=6):
    root = sources["root"]
    models = models or {"_pretrained_": "someone/tiny-clip", "alpha": "src/alpha", "beta": "src/beta",
                        "gamma": "src/gamma"}
    doc = {"models": models, "templates": str(root / "templates.json"), "max_examples": max_examples, "seed": 3,
           "datasets": {"alpha": {"path": "data/alpha.parquet", "split": "test"},
                        "beta": {"path": "data/beta"}, "gamma": "data/gamma.parquet"}}
    import yaml

    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _reference_clip(sources):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(sources["folders"]["_pretrained_"]), local_files_only=True).eval()


def _processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})


def test_preprocessing_matches_transformers_processor(sources):
    from flexmerge_core.architectures.hf_clip_vision import HFClipVision
    from flexmerge_core.architectures.hf_image_preprocess import preprocess_subset

    transform = HFClipVision().input_transform({"vision_config": {"image_size": 32},
                                                "preprocess": preprocess_subset(PREPROCESSOR)})
    images = sources["raw"]["alpha"][0]
    expected = _processor()(images=images, return_tensors="pt")["pixel_values"]
    ours = torch.stack([transform(img) for img in images])
    assert ours.shape == expected.shape == (9, 3, 32, 32)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_forward_and_stages_equal_get_image_features(sources, one_thread):
    from flexmerge_core.architectures.hf_clip_vision import HFClipVision, clean_vision_config
    from flexmerge_core.evaluation.forward import StagedEncoder

    clip = _reference_clip(sources)
    vision = dict(clip.config.vision_config.to_dict(), projection_dim=clip.config.projection_dim)
    adapter = HFClipVision()
    module = adapter.build(adapter.check_config({"vision_config": clean_vision_config(vision)}))
    state = {k: v for k, v in clip.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    module.load_state_dict(state, strict=True)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = clip.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(adapter.forward(module, pixels), expected, atol=1e-5)
    runner = StagedEncoder(module, device="cpu", adapter=adapter)
    assert runner.num_stages == 2 * 2 + 2
    staged, _ = runner.features([{} for _ in range(runner.num_stages)], pixels)
    assert torch.allclose(staged, expected, atol=1e-5)


def _zeroshot_logits(features, head):
    return F.normalize(features, dim=-1) @ head["weight"].t() + head["bias"]


def _reference_logits(sources, task, visual_state, images):
    """Zero-shot logits of a CLIP with `visual_state`: textbook prompts -> normalised class embeddings."""
    from transformers import CLIPTokenizer

    clip = _reference_clip(sources)
    clip.load_state_dict(visual_state, strict=False)
    tokenizer = CLIPTokenizer.from_pretrained(str(sources["folders"]["_pretrained_"]), local_files_only=True)
    rows = []
    with torch.no_grad():
        for name in CLASSES[task]:
            tokens = tokenizer([t.format(name) for t in TEMPLATES], padding=True, return_tensors="pt")
            emb = F.normalize(clip.get_text_features(**tokens).pooler_output, dim=-1).mean(0)
            rows.append(emb / emb.norm())
        features = F.normalize(clip.get_image_features(pixel_values=images).pooler_output, dim=-1)
    return features @ torch.stack(rows).t() * clip.logit_scale.exp()


def test_spec_import_plan_curve_export(sources, tmp_path, monkeypatch, private_cache, one_thread):
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.forward import StagedEncoder
    from flexmerge_core.pipeline import Pipeline, PlanSettings
    from flexmerge_core.zoo import open_zoo

    monkeypatch.setenv("HF_HUB_CACHE", str(sources["hub"]))
    zoo_dir = tmp_path / "zoo"
    code, out, err = _cli("zoo", "import", _spec(sources), "--out", zoo_dir, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["models"]["_pretrained_"]["mode"] == "link"
    assert {report["models"][t]["mode"] for t in CLASSES} == {"rewrite"}   # transformers 5 names: no prefix
    zoo = open_zoo(zoo_dir)
    assert zoo.recipe["source"]["format"] == "hf_clip"
    assert zoo.recipe["source"]["ids"]["_pretrained_"] == "someone/tiny-clip"
    assert zoo.unmerged_names == ["visual_projection.weight"]
    # the pretrained weights are the hub cache's file itself (a hard link), never rewritten
    linked = zoo_dir / "models" / "_pretrained_--model.safetensors"
    hub_file = sources["hub"] / "models--someone--tiny-clip" / "snapshots" / "abc123" / "model.safetensors"
    assert os.stat(linked).st_ino == os.stat(hub_file).st_ino
    manifest = json.loads((zoo_dir / "zoo.json").read_text())
    assert all(not os.path.isabs(t["checkpoint"]) and ".." not in t["checkpoint"] for t in manifest["tasks"])

    # held-out data: the seeded sample of 6 of 9 rows, preprocessed as transformers' processor does
    rows = torch.randperm(9, generator=torch.Generator().manual_seed(3))[:6].sort().values
    images, labels = zoo.heldout(zoo.task_names.index("beta"))
    raw_images, raw_labels = sources["raw"]["beta"]
    expected = _processor()(images=[raw_images[i] for i in rows], return_tensors="pt")["pixel_values"]
    assert torch.allclose(images, expected, atol=1e-5)
    assert labels.tolist() == [raw_labels[i] for i in rows]
    assert zoo.classes[zoo.task_names.index("beta")] == CLASSES["beta"]

    # each fine-tuned model's zero-shot logits equal the textbook CLIP computation (projection = pretrained's)
    from safetensors.torch import load_file

    for task in CLASSES:
        t = zoo.task_names.index(task)
        ft = {k: v for k, v in load_file(str(sources["folders"][task] / "model.safetensors")).items()} \
            if (sources["folders"][task] / "model.safetensors").exists() else None
        state = {n: zoo.task_tensor(t, n) for n in zoo.param_shapes}
        if ft is not None:
            assert all(torch.equal(state[f"vision_model.{k}"], v) for k, v in ft.items())
        module = zoo.build_encoder()
        module.load_state_dict(state, strict=True)
        images, _ = zoo.heldout(t)
        ours = _zeroshot_logits(zoo.architecture.forward(module, images), zoo.head(t))
        reference = _reference_logits(sources, task, state, images)
        assert torch.allclose(ours, reference, atol=1e-4)

    code, out, err = _cli("plan", "--zoo", zoo_dir, "--algorithm", "ta", "--json")
    assert code == 0, err
    assert json.loads(out)["num_tasks"] == 3
    code, out, err = _cli("curve", "--zoo", zoo_dir, "--algorithm", "ta", "--sizes", "1,3", "--json")
    assert code == 0, err
    curve = json.loads(out)
    top = next(r for r in curve["rows"] if r["size_budget"] == 3)
    assert top["accuracy"] == pytest.approx(curve["finetuned"])   # at M the deployment is the fine-tuned models

    export = tmp_path / "beta.safetensors"
    code, _, err = _cli("export", "--zoo", zoo_dir, "--algorithm", "ta", "--size", "1", "--task", "beta",
                        "--out", export)
    assert code == 0, err
    from transformers import CLIPVisionConfig, CLIPVisionModel

    exported = load_file(str(export))
    config = CLIPVisionConfig(**zoo.manifest.architecture_config["vision_config"])
    tower = CLIPVisionModel(config).eval()
    tower.load_state_dict({k[len("vision_model."):]: v for k, v in exported.items()
                           if k.startswith("vision_model.")}, strict=True)
    images, _ = zoo.heldout(zoo.task_names.index("beta"))
    with torch.no_grad():
        features = tower(pixel_values=images).pooler_output @ exported["visual_projection.weight"].t()
    head = load_file(str(export.with_suffix(".head.safetensors")))
    reloaded = _zeroshot_logits(features, head)
    pipeline = Pipeline(zoo, PlanSettings(algorithm="ta"))
    deployment = build_deployment(zoo, pipeline.plan, pipeline.algorithm, 1.0, merger=pipeline.merger())
    runner = StagedEncoder(zoo.build_encoder(), device="cpu", adapter=zoo.architecture)
    task = zoo.task_names.index("beta")
    engine, _ = runner.features(runner.split(deployment.encoder_state_dict(task)), images)
    assert torch.allclose(reloaded, _zeroshot_logits(engine, zoo.head(task)), atol=1e-5)


def test_prefixed_sharded_folders_are_linked_and_an_own_projection_is_merged(sources, tmp_path):
    """A sharded CLIPVisionModelWithProjection (names `vision_model.*` + its own projection) is linked shard by
    shard; with a task bringing its own projection, the projection is merged, the others' being the pretrained."""
    from transformers import CLIPVisionModelWithProjection

    from flexmerge_core.importers.dispatch import import_source
    from flexmerge_core.zoo import open_zoo

    src = tmp_path / "src"
    shutil.copytree(sources["root"] / "src", src)
    shutil.rmtree(src / "gamma")
    clip = _reference_clip(sources)
    own = CLIPVisionModelWithProjection(clip.config.vision_config.__class__(
        **{**clip.config.vision_config.to_dict(), "projection_dim": clip.config.projection_dim}))
    own.load_state_dict({k: v + 0.01 for k, v in clip.state_dict().items()
                         if k.startswith(("vision_model.", "visual_projection."))}, strict=True)
    own.save_pretrained(src / "gamma", max_shard_size="20KB")
    assert len(list((src / "gamma").glob("model-*.safetensors"))) > 1
    report = import_source(src, tmp_path / "zoo")
    assert report.models["gamma"]["mode"] == "link" and report.models["alpha"]["mode"] == "rewrite"
    zoo = open_zoo(tmp_path / "zoo")
    assert zoo.unmerged_names == [] and "visual_projection.weight" in zoo.param_names
    gamma, alpha = zoo.task_names.index("gamma"), zoo.task_names.index("alpha")
    for name, tensor in own.state_dict().items():
        assert torch.equal(zoo.task_tensor(gamma, name), tensor)
    assert torch.equal(zoo.task_tensor(alpha, "visual_projection.weight"), clip.visual_projection.weight.detach())
    shard = next((src / "gamma").glob("model-*.safetensors"))
    assert os.stat(tmp_path / "zoo" / "models" / f"gamma--{shard.name}").st_ino == os.stat(shard).st_ino


def test_folder_layout_without_spec(sources, tmp_path, private_cache, one_thread):
    """SRC/pretrained + SRC/<task> save_pretrained folders, --data with parquet and save_to_disk entries."""
    from flexmerge_core.zoo import open_zoo

    code, out, err = _cli("zoo", "import", sources["root"] / "src", "--out", tmp_path / "zoo", "--data",
                          sources["data"], "--max-examples", "4", "--templates", sources["root"] / "templates.json",
                          "--json")
    assert code == 0, err
    zoo = open_zoo(tmp_path / "zoo")
    assert zoo.task_names == sorted(CLASSES)
    assert [len(zoo.heldout(t)[1]) for t in range(3)] == [4, 4, 4]
    assert zoo.recipe["source"]["format"] == "hf_clip"
    code, out, err = _cli("zoo", "info", "--zoo", tmp_path / "zoo", "--json")
    assert code == 0 and json.loads(out)["source"] == "hf_clip"


def test_model_not_on_disk_is_one_line_error(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(sources["hub"]))
    spec = _spec(sources, models={"_pretrained_": "someone/tiny-clip", "alpha": "nobody/missing-model",
                                  "beta": "src/beta"})
    code, out, err = _cli("zoo", "import", spec, "--out", tmp_path / "zoo")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "nobody/missing-model" in err and "never download" in err


def test_missing_files_are_named(sources, tmp_path):
    from flexmerge_core.errors import ZooError
    from flexmerge_core.importers.dispatch import import_source

    src = tmp_path / "src"
    shutil.copytree(sources["root"] / "src", src)
    (src / "pretrained" / "preprocessor_config.json").unlink()
    with pytest.raises(ZooError, match="preprocessor_config.json: missing"):
        import_source(src, tmp_path / "zoo", data=sources["data"])
    (src / "gamma" / "model.safetensors").unlink()
    with pytest.raises(ZooError, match="gamma/model.safetensors: missing"):
        import_source(src, tmp_path / "zoo")
