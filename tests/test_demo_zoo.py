"""The demo zoo builder on its MICRO configuration (same code path as the real build, tiny settings)."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from flexmerge_core.pipeline import resolve_zoo
from flexmerge_core.zoo import open_zoo
from flexmerge_core.demo import vision as demo
from flexmerge_core.demo import vision_tasks
from flexmerge_core.demo.report import targets_met


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
    specs = {t.name: t for t in vision_tasks.TASKS}
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
    assert report["ta_1x_gap"] == pytest.approx(report["finetuned_avg_accuracy"] - report["ta_1x_avg_accuracy"], abs=2e-4)
    assert report["ta_2x_gap"] == pytest.approx(report["finetuned_avg_accuracy"] - report["ta_2x_avg_accuracy"], abs=2e-4)
    assert report["targets_met"].split()[0] in {f"{k}/4" for k in range(5)}
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
    zoo = resolve_zoo("demo")
    assert zoo.root == (tmp_path / "demo-zoo").resolve() and zoo.name == "demo"
    monkeypatch.setattr(demo, "train_demo_models", lambda *a, **k: pytest.fail("rebuilt a current zoo"))
    assert resolve_zoo("demo").root == zoo.root


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


@pytest.mark.parametrize("task", vision_tasks.TASKS, ids=lambda t: t.name)
def test_task_generators_give_documented_labels_and_images(task):
    fonts = vision_tasks.load_fonts()
    images, labels = vision_tasks.sample_task(task, 60, np.random.default_rng(7), fonts)
    assert images.shape == (60, 3, 16, 16) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < len(task.classes)
    assert len(np.unique(labels)) >= min(len(task.classes), 4)  # classes are all drawn, not one
    again, _ = vision_tasks.sample_task(task, 60, np.random.default_rng(7), fonts)
    assert np.array_equal(images, again)


def test_a_family_asks_one_question_in_different_domains():
    """Members of a family share their classes (the question) but draw different images (the domain)."""
    fonts = vision_tasks.load_fonts()
    for family in vision_tasks.FAMILY_NAMES:
        members = [t for t in vision_tasks.TASKS if t.family == family]
        assert len(members) >= 2 and len({t.classes for t in members}) == 1
        draws = [vision_tasks.sample_task(t, 20, np.random.default_rng(5), fonts)[0] for t in members]
        for i in range(len(draws)):
            for j in range(i + 1, len(draws)):
                assert not np.allclose(draws[i], draws[j], atol=0.05)
    assert {t.family for t in vision_tasks.TASKS} == set(vision_tasks.FAMILY_NAMES)


def test_font_groups_split_the_dejavu_fonts_by_style():
    fonts = vision_tasks.load_fonts()
    stems = {g: sorted(s for s, f in fonts.items() if f in vision_tasks.font_group(fonts, g))
             for g in vision_tasks.FONT_GROUPS}
    assert stems["mono"] and all(s.startswith("DejaVuSansMono") for s in stems["mono"])
    assert stems["serif"] and all(s.startswith("DejaVuSerif") and "Condensed" not in s for s in stems["serif"])
    assert stems["condensed"] and all("Condensed" in s for s in stems["condensed"])
    assert stems["sans"] and all(s.split("-")[0] == "DejaVuSans" for s in stems["sans"])
    groups = list(stems.values())
    assert all(not set(a) & set(b) for i, a in enumerate(groups) for b in groups[i + 1:])


@pytest.mark.parametrize("label", range(len(vision_tasks.DIRECTIONS)))
def test_arrow_label_is_the_compass_direction_of_its_tip(label):
    """The tip (r, 0) turned by the label's angle points to DIRECTIONS[label] on screen (y grows down):
    E/W in the name fix the sign of x, N/S the sign of y, and consecutive labels are 22.5 degrees apart."""
    angle = 2 * np.pi * label / len(vision_tasks.DIRECTIONS)
    (x, y), = vision_tasks._turn([(10.0, 0.0)], 0.0, 0.0, angle)
    name = vision_tasks.DIRECTIONS[label]
    sign_x = 1 if "E" in name else -1 if "W" in name else 0
    sign_y = -1 if "N" in name else 1 if "S" in name else 0
    assert (int(np.sign(round(x, 6))), int(np.sign(round(y, 6)))) == (sign_x, sign_y)
    assert np.degrees(np.arctan2(-y, x)) % 360 == pytest.approx(22.5 * label)


def test_parallel_build_equals_the_in_process_build():
    """Worker processes and data-parallel pretraining give the same bits as one process doing it all."""
    alone = demo.train_demo_models(demo.MICRO, seed=1, workers=1)
    spread = demo.train_demo_models(demo.MICRO, seed=1, workers=2)
    assert alone[1] == spread[1]
    assert all(torch.equal(alone[0][k], spread[0][k]) for k in alone[0])
    for a, b in zip(alone[2], spread[2]):
        assert a["finetuned_accuracy"] == b["finetuned_accuracy"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
        assert torch.equal(a["head"]["weight"], b["head"]["weight"])


def test_sharded_steps_average_the_slices_gradients():
    """With 2 shards, one step equals a plain step on the whole batch (up to float rounding)."""
    from flexmerge_core.demo import vision_training

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(3, (16,))
    models = [torch.nn.Linear(5, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model, shards in zip(models, (1, 2)):
        vision_training.train(model, list(model.parameters()), x, y, steps=1, lr=0.1, batch_size=16,
                            gen=torch.Generator().manual_seed(4), weight_decay=0.0, clip_norm=100.0, shards=shards)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_pretraining_labels_cover_the_glyph_set():
    images, labels = vision_tasks.sample_pretraining(300, np.random.default_rng(0), vision_tasks.load_fonts())
    assert images.shape == (300, 3, 16, 16)
    assert labels.min() >= 0 and labels.max() < len(vision_tasks.PRETRAIN_GLYPHS)
    assert len(set(vision_tasks.PRETRAIN_GLYPHS)) == len(vision_tasks.PRETRAIN_GLYPHS)


def test_missing_fonts_fall_back_visibly(tmp_path):
    with pytest.warns(UserWarning, match="no DejaVu fonts"):
        fonts = vision_tasks.load_fonts(tmp_path)
    image = vision_tasks.render_glyph("a", next(iter(fonts.values())), np.random.default_rng(0))
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


def test_targets_met_names_the_missed_goals():
    base = {"finetuned_avg_accuracy": 0.9, "ta_1x_gap": 0.12, "ta_2x_gap": 0.05, "cosine_ratio": 3.2}
    assert targets_met(base) == "4/4"
    assert targets_met({**base, "ta_2x_gap": 0.07}) == "3/4 (missed: 2x gap <= 1x gap / 2)"
    assert targets_met({**base, "cosine_ratio": None, "finetuned_avg_accuracy": 0.8}) == \
        "2/4 (missed: fine-tuned >= 0.85, cosine ratio >= 3)"


def test_workers_do_not_rerun_the_parents_main_script(app_page_as_main):
    """Under Streamlit, __main__ is the app page: spawned workers must not execute it again."""
    from flexmerge_core.demo import vision_training
    from flexmerge_core.demo.workers import BuildPool

    with BuildPool(2) as pool:
        images, labels = pool.submit(vision_training.render_pretraining, 4, 0, 0).result()
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4,)
    assert not app_page_as_main.exists()


def test_pretraining_falls_back_to_one_process_when_the_shards_cannot_meet(monkeypatch):
    """A rendezvous that cannot work (its store is the root folder, not a file) costs a warning, not the
    build: the in-process pretraining gives the same weights the shards would have."""
    from flexmerge_core.demo import vision_training
    from flexmerge_core.demo import workers as demo_workers

    data = (*vision_training.render_pretraining(64, 0, 0), *vision_training.render_pretraining(16, 0, 0, True))
    with demo_workers.BuildPool(1) as pool:
        expected, expected_accuracy = pool.pretrain(demo.MICRO, 0, data)
    monkeypatch.setattr(demo_workers, "rendezvous_store", lambda folder: "/")
    with demo_workers.BuildPool(2) as pool, pytest.warns(UserWarning, match="data-parallel pretraining failed"):
        state, accuracy = pool.pretrain(demo.MICRO, 0, data)
    assert accuracy == expected_accuracy and all(torch.equal(state[k], expected[k]) for k in expected)
