"""The text demo zoo builder on its MICRO configuration (same code path as the real build, tiny settings)."""
import json

import numpy as np
import pytest
import torch

from flexmerge_core.demo import text as demo
from flexmerge_core.demo import text_tasks
from flexmerge_core.pipeline import resolve_zoo
from flexmerge_core.zoo import open_zoo


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cache")
        mp.setenv("FLEXMERGE_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def micro_zoo(cache, tmp_path_factory):
    return demo.build_text_demo_zoo(tmp_path_factory.mktemp("a") / "zoo", seed=3, config=demo.MICRO, workers=1)


def _all_tensors(zoo):
    out = {("pre", n): zoo.pretrained_tensor(n) for n in zoo.param_names}
    for k in range(len(zoo.task_names)):
        out.update({(k, n): zoo.task_tensor(k, n) for n in zoo.param_names})
    return out


def test_micro_zoo_is_an_lm_zoo_with_rank_tasks_and_a_report(micro_zoo):
    zoo = open_zoo(micro_zoo)
    assert zoo.name == "demo-text" and zoo.manifest.architecture_kind == "hf_causal_lm"
    assert zoo.task_names == list(demo.MICRO.tasks)
    assert {t.kind for t in zoo.manifest.tasks} == {"text_classification_rank"}
    assert zoo.recipe["families"] == {"sentiment-films": "sentiment", "sentiment-meals": "sentiment",
                                      "topic-about": "topic"}
    report = zoo.recipe["report"]
    assert set(report) >= {"finetuned_avg_accuracy", "ta_1x_avg_accuracy", "ta_2x_avg_accuracy", "cosine_ratio",
                           "targets_met", "pretrain_next_token_accuracy", "build_seconds", "parameters"}
    assert report["parameters"] == sum(zoo.pretrained_tensor(n).numel() for n in zoo.state_names)
    for task in demo.MICRO.tasks:
        rows = (micro_zoo / "data" / task / f"{task}.jsonl").read_text().splitlines()
        assert len(rows) == demo.MICRO.heldout_examples
    assert (micro_zoo / "pretrained" / "tokenizer.json").is_file()


def test_same_seed_same_bits_other_seed_other_zoo(micro_zoo, tmp_path):
    again = open_zoo(demo.build_text_demo_zoo(tmp_path / "b", seed=3, config=demo.MICRO, workers=1))
    first = open_zoo(micro_zoo)
    a, b = _all_tensors(first), _all_tensors(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for task in demo.MICRO.tasks:
        relative = f"data/{task}/{task}.jsonl"
        assert (micro_zoo / relative).read_bytes() == (again.root / relative).read_bytes()
    assert first.finetuned_accuracy == again.finetuned_accuracy
    other = open_zoo(demo.build_text_demo_zoo(tmp_path / "c", seed=4, config=demo.MICRO, workers=1))
    assert not torch.equal(other.pretrained_tensor("model.embed_tokens.weight"),
                           first.pretrained_tensor("model.embed_tokens.weight"))


def test_parallel_training_equals_the_in_process_training(cache):
    alone = demo.train_text_models(demo.MICRO, seed=1, workers=1)
    spread = demo.train_text_models(demo.MICRO, seed=1, workers=2)
    assert alone[1] == spread[1]
    for a, b in zip([alone[0], *alone[2].values()], [spread[0], *spread[2].values()]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stored_finetuned_accuracy_is_rank_classification_of_the_stored_model(micro_zoo):
    """Reference: score every choice with transformers directly (mean log-probability of its tokens
    after the prompt), pick the best, compare with the labels of the jsonl file."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(micro_zoo / "pretrained"))
    zoo = open_zoo(micro_zoo)
    for task in zoo.task_names:
        model = LlamaForCausalLM.from_pretrained(str(micro_zoo / "tasks" / task)).eval()
        choices = text_tasks.TASKS_BY_NAME[task].choices
        rows = [json.loads(line) for line in (micro_zoo / "data" / task / f"{task}.jsonl").read_text().splitlines()]
        right = 0
        for row in rows:
            scores = []
            for choice in choices:
                prompt = tokenizer(row["input"])["input_ids"]
                answer = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0].float(), -1)
                scores.append(float(np.mean([logp[len(prompt) - 1 + i, t] for i, t in enumerate(answer)])))
            right += int(np.argmax(scores) == row["label"])
        assert zoo.finetuned_accuracy[task] == pytest.approx(right / len(rows), abs=1e-9)


def test_resolve_demo_text_builds_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXMERGE_CACHE", str(tmp_path))
    monkeypatch.setenv("FLEXMERGE_DEMO_WORKERS", "1")
    monkeypatch.setattr(demo, "FULL", demo.MICRO)
    zoo = resolve_zoo("demo-text")
    assert zoo.root == (tmp_path / "demo-text-zoo").resolve() and zoo.name == "demo-text"
    monkeypatch.setattr(demo, "train_text_models", lambda *a, **k: pytest.fail("rebuilt a current zoo"))
    assert resolve_zoo("demo-text").root == zoo.root


def test_cli_build_demo_text_prints_the_folder_and_its_report(micro_zoo, tmp_path, monkeypatch, capsys):
    from flexmerge_core.cli import main

    monkeypatch.setenv("FLEXMERGE_DEMO_WORKERS", "1")
    monkeypatch.setattr(demo, "FULL", demo.MICRO)
    out = tmp_path / "z"
    assert main(["zoo", "build-demo", "--text", "--out", str(out), "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out)
    report = open_zoo(out).recipe["report"]
    assert lines[1:] == [f"  {k}: {v}" for k, v in report.items()]
    assert demo.is_current(out, demo.MICRO, seed=3) and not demo.is_current(out, demo.MICRO, seed=0)


def _polarity(words: list[str]) -> bool:
    """Independent reading of a review: each clause's adjective, flipped by a 'not' before it."""
    votes = []
    for i, word in enumerate(words):
        if word in text_tasks.POSITIVE or word in text_tasks.NEGATIVE:
            votes.append((word in text_tasks.POSITIVE) != (words[i - 1] == "not"))
    assert votes and len(set(votes)) == 1, words   # the clauses of a review agree
    return votes[0]


@pytest.mark.parametrize("task", text_tasks.TASKS, ids=lambda t: t.name)
def test_task_labels_are_what_the_review_says(task):
    prompts, labels = text_tasks.sample_task(task, 200, np.random.default_rng(0), negation=0.3)
    assert set(labels.tolist()) == set(range(len(task.choices)))
    for words, label in zip(prompts, labels):
        assert words[-len(task.question):] == list(task.question)
        nouns = {d for d, ns in text_tasks.DOMAINS.items() if set(words) & set(ns)}
        assert len(nouns) == 1 and nouns <= set(task.domains)
        if task.family == "sentiment":
            assert task.choices[label] == ("positive" if _polarity(words) else "negative")
        else:
            assert label == list(text_tasks.DOMAINS).index(nouns.pop())


def test_tokenizer_reads_every_generated_word_as_one_token_after_bos():
    from flexmerge_core.demo.text_training import build_tokenizer

    tokenizer = build_tokenizer()
    words = text_tasks.vocabulary()
    plain = [w for w in words if w not in text_tasks.SPECIALS]
    ids = tokenizer(" ".join(plain))["input_ids"]
    assert ids == [words.index("[BOS]")] + [words.index(w) for w in plain]
    assert tokenizer("zebra", add_special_tokens=False)["input_ids"] == [words.index("[UNK]")]
