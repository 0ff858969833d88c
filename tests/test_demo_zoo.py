"""The demo zoo builder on its MICRO configuration (same code path as the real build, tiny settings)."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from flexmerge_core.zoo import demo, demo_tasks, open_zoo


@pytest.fixture(scope="module")
def micro_zoo(tmp_path_factory):
    return demo.build_demo_zoo(tmp_path_factory.mktemp("a") / "zoo", seed=3, config=demo.MICRO)


def _all_tensors(zoo):
    out = {("pre", n): zoo.pretrained_tensor(n) for n in zoo.param_names}
    for k in range(len(zoo.task_names)):
        out.update({(k, n): zoo.task_tensor(k, n) for n in zoo.param_names})
        out.update({(k, "head", n): t for n, t in zoo.head(k).items()})
    return out


def test_micro_zoo_opens_with_heads_data_and_report(micro_zoo):
    zoo = open_zoo(micro_zoo)
    assert zoo.task_names == list(demo.MICRO.tasks)
    specs = {t.name: t for t in demo_tasks.TASKS}
    for k, name in enumerate(zoo.task_names):
        images, labels = zoo.heldout(k)
        assert images.shape == (demo.MICRO.heldout_images, 3, 16, 16) and images.dtype == torch.float32
        assert zoo.head(k)["weight"].shape == (len(specs[name].classes), demo.MICRO.architecture["output_dim"])
        assert 0.0 <= zoo.finetuned_accuracy[name] <= 1.0
    report = zoo.recipe["report"]
    assert report["parameters"] == sum(zoo.pretrained_tensor(n).numel() for n in zoo.param_names)
    assert report["build_seconds"] > 0
    assert report["finetuned_avg_accuracy"] == pytest.approx(np.mean(list(zoo.finetuned_accuracy.values())),
                                                             abs=1e-4)
    for key in ("ta_1x_avg_accuracy", "ta_2x_avg_accuracy", "within_family_cosine", "across_family_cosine"):
        assert key in report
    assert zoo.recipe["families"] == {t: specs[t].family for t in zoo.task_names}


def test_finetuned_accuracy_is_the_stored_models_accuracy(micro_zoo):
    """The manifest's number is recomputed from the written encoder, head and held-out data."""
    zoo = open_zoo(micro_zoo)
    encoder = zoo.build_encoder()
    for k, name in enumerate(zoo.task_names):
        encoder.load_state_dict({n: zoo.task_tensor(k, n) for n in zoo.param_names})
        images, labels = zoo.heldout(k)
        head = zoo.head(k)
        with torch.no_grad():
            predicted = (encoder(images) @ head["weight"].T + head["bias"]).argmax(1)
        assert zoo.finetuned_accuracy[name] == pytest.approx(float((predicted == labels).float().mean()))


def test_same_seed_same_zoo_other_seed_other_zoo(micro_zoo, tmp_path):
    again = open_zoo(demo.build_demo_zoo(tmp_path / "b", seed=3, config=demo.MICRO))
    first = open_zoo(micro_zoo)
    assert again.finetuned_accuracy == first.finetuned_accuracy
    a, b = _all_tensors(first), _all_tensors(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k in range(len(first.task_names)):
        assert torch.equal(first.heldout(k)[0], again.heldout(k)[0])
    other = open_zoo(demo.build_demo_zoo(tmp_path / "c", seed=4, config=demo.MICRO))
    assert not torch.equal(other.task_tensor(0, "conv1.weight"), first.task_tensor(0, "conv1.weight"))


def test_current_zoo_is_reused_and_changed_recipe_rebuilds(tmp_path, monkeypatch):
    out = demo.build_demo_zoo(tmp_path / "z", seed=0, config=demo.MICRO)
    first_hash = open_zoo(out).recipe["hash"]

    def no_training(*args, **kwargs):
        raise AssertionError("a current zoo must not be rebuilt")

    with monkeypatch.context() as m:
        m.setattr(demo, "train_demo_models", no_training)
        assert demo.build_demo_zoo(out, seed=0, config=demo.MICRO) == out
    changed = replace(demo.MICRO, finetune_steps=demo.MICRO.finetune_steps + 1)
    assert not demo.is_current(out, changed, seed=0)
    demo.build_demo_zoo(out, seed=0, config=changed)
    assert open_zoo(out).recipe["hash"] == demo.recipe_hash(changed, 0) != first_hash
    assert demo.is_current(out, changed, seed=0)


def test_open_zoo_demo_builds_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "FULL", demo.MICRO)
    zoo = open_zoo("demo")
    assert zoo.root == (tmp_path / "demo-zoo").resolve() and zoo.name == "demo"
    monkeypatch.setattr(demo, "train_demo_models", lambda *a, **k: pytest.fail("rebuilt a current zoo"))
    assert open_zoo("demo").root == zoo.root


def test_failed_build_leaves_nothing_that_looks_valid(tmp_path, monkeypatch):
    def crash(zoo, families):
        raise KeyboardInterrupt  # as if the process were interrupted while the report is computed

    monkeypatch.setattr(demo, "merge_report", crash)
    with pytest.raises(KeyboardInterrupt):
        demo.build_demo_zoo(tmp_path / "z", config=demo.MICRO)
    assert list(tmp_path.iterdir()) == []
    assert not demo.is_current(tmp_path / "z", demo.MICRO, seed=0)


def test_incomplete_zoo_without_report_is_not_current(micro_zoo, tmp_path):
    """A zoo whose manifest lacks the report (never published by the builder) is rebuilt, not trusted."""
    copy = tmp_path / "copy"
    shutil.copytree(micro_zoo, copy)
    assert demo.is_current(copy, demo.MICRO, seed=3)
    doc = json.loads((copy / "zoo.json").read_text())
    del doc["recipe"]["report"]
    (copy / "zoo.json").write_text(json.dumps(doc))
    assert open_zoo(copy).task_names  # still a loadable zoo, but not a finished demo build
    assert not demo.is_current(copy, demo.MICRO, seed=3)


@pytest.mark.parametrize("task", demo_tasks.TASKS, ids=lambda t: t.name)
def test_task_generators_give_documented_labels_and_images(task):
    fonts = demo_tasks.load_fonts()
    images, labels = demo_tasks.sample_task(task, 60, np.random.default_rng(7), fonts)
    assert images.shape == (60, 3, 16, 16) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < len(task.classes)
    assert len(np.unique(labels)) >= min(len(task.classes), 4)  # classes are all drawn, not one
    again, _ = demo_tasks.sample_task(task, 60, np.random.default_rng(7), fonts)
    assert np.array_equal(images, again)


def test_tasks_of_a_family_see_the_same_images_and_ask_about_one_latent():
    """Family members differ only in their label function of the shared scene latent."""
    fonts = demo_tasks.load_fonts()
    tasks = {t.name: t for t in demo_tasks.TASKS}
    draws = {name: demo_tasks.sample_task(tasks[name], 40, np.random.default_rng(5), fonts)
             for name in ("digit", "digit-parity", "digit-large", "count", "count-parity", "count-many",
                          "orientation", "orientation-axis")}
    for a, b in (("digit", "digit-parity"), ("digit", "digit-large"), ("count", "count-many"),
                 ("orientation", "orientation-axis")):
        assert np.array_equal(draws[a][0], draws[b][0])
    digit = draws["digit"][1]
    assert np.array_equal(draws["digit-parity"][1], digit % 2)
    assert np.array_equal(draws["digit-large"][1], (digit >= 5).astype(np.int64))
    count = draws["count"][1] + 1
    assert np.array_equal(draws["count-parity"][1], count % 2)
    assert np.array_equal(draws["count-many"][1], (count >= 3).astype(np.int64))
    assert np.array_equal(draws["orientation-axis"][1], draws["orientation"][1] % 2)
    assert {t.family for t in demo_tasks.TASKS} == set(demo_tasks.FAMILY_NAMES)


def test_count_task_draws_as_many_separate_dots_as_its_label_says():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for label in range(5):
        radius = 6.0
        centres = demo_tasks._scatter(rng, label + 1, radius)
        mask = np.zeros((demo_tasks.CANVAS, demo_tasks.CANVAS), bool)
        yy, xx = np.mgrid[:demo_tasks.CANVAS, :demo_tasks.CANVAS]
        for x, y in centres:
            mask |= (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        assert ndimage.label(mask)[1] == label + 1


def test_pretraining_labels_cover_the_glyph_set():
    images, labels = demo_tasks.sample_pretraining(300, np.random.default_rng(0), demo_tasks.load_fonts())
    assert images.shape == (300, 3, 16, 16)
    assert labels.min() >= 0 and labels.max() < len(demo_tasks.PRETRAIN_GLYPHS)
    assert len(set(demo_tasks.PRETRAIN_GLYPHS)) == len(demo_tasks.PRETRAIN_GLYPHS)


def test_missing_fonts_fall_back_visibly(tmp_path):
    with pytest.warns(UserWarning, match="no DejaVu fonts"):
        fonts = demo_tasks.load_fonts(tmp_path)
    image = demo_tasks.render_glyph("a", fonts[0], np.random.default_rng(0))
    assert image.shape == (3, 16, 16)


def test_cli_build_demo_prints_the_folder_and_its_report(tmp_path, monkeypatch, capsys):
    from flexmerge_core.cli import main

    monkeypatch.setattr(demo, "FULL", demo.MICRO)
    assert main(["zoo", "build-demo", "--out", str(tmp_path / "z"), "--seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(tmp_path / "z")
    report = open_zoo(tmp_path / "z").recipe["report"]
    assert lines[1:] == [f"  {k}: {v}" for k, v in report.items()]
    assert demo.is_current(tmp_path / "z", demo.MICRO, seed=2)
