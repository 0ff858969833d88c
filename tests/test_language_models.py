"""Language-model zoos end to end (tiny T5 and Llama in real HF formats, PEFT LoRA adapters): import ->
plan -> curve -> export -> from_pretrained, with rank scores and generations checked against plain
loops over the model's logits written here."""
import copy
import json

import pytest
import torch

from lm_zoos import GEN_ROWS, RANK_ROWS, VOCAB

pytestmark = pytest.mark.usefixtures("one_thread", "private_cache")


def _load(folder):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(folder).is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(folder).eval()


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def _choice_mean(model, tok, text, choice):
    """Sum of the choice's token log-probabilities / its length, one token at a time from the logits."""
    context = tok(text)["input_ids"]
    choice_ids = tok(" " + choice, add_special_tokens=False)["input_ids"]
    if model.config.is_encoder_decoder:
        targets = choice_ids + [model.config.eos_token_id]
        decoder = [model.config.decoder_start_token_id] + targets[:-1]
        logits = model(input_ids=torch.tensor([context]), decoder_input_ids=torch.tensor([decoder])).logits[0]
        positions = range(len(targets))
    else:
        targets = choice_ids
        logits = model(input_ids=torch.tensor([context + choice_ids])).logits[0]
        positions = [len(context) + j - 1 for j in range(len(targets))]
    total = 0.0
    for position, target in zip(positions, targets):
        total += float(torch.log_softmax(logits[position].double(), dim=-1)[target])
    return total / len(targets)


def _rank_reference(model, tok):
    """(per-example choice means, per-example 0/1 correct) of the rank rows."""
    means, correct = [], []
    for row in RANK_ROWS:
        scores = [_choice_mean(model, tok, row["text"], c) for c in row["choices"]]
        label = row["label"] if isinstance(row["label"], int) else row["choices"].index(row["label"])
        means.append(scores)
        correct.append(float(max(range(len(scores)), key=lambda i: (scores[i], -i)) == label))
    return means, correct


@torch.no_grad()
def _greedy_reference(model, tok):
    """0/1 exact match of a token-by-token greedy loop (no cache, no padding) per generation row."""
    from flexmerge_core.tasks.text_exact_match import normalize_answer

    eos, hits = model.config.eos_token_id, []
    for row in GEN_ROWS:
        context = tok(row["q"])["input_ids"]
        out = [model.config.decoder_start_token_id] if model.config.is_encoder_decoder else list(context)
        new = []
        for _ in range(4):
            if model.config.is_encoder_decoder:
                logits = model(input_ids=torch.tensor([context]), decoder_input_ids=torch.tensor([out])).logits
            else:
                logits = model(input_ids=torch.tensor([out])).logits
            token = int(logits[0, -1].argmax())
            if token == eos:
                break
            out.append(token)
            new.append(token)
        answers = [row["a"]] if isinstance(row["a"], str) else row["a"]
        text = normalize_answer(tok.decode(new, skip_special_tokens=True))
        hits.append(float(text in {normalize_answer(a) for a in answers}))
    return hits


def _reference(model, tok, task):
    return _rank_reference(model, tok)[1] if task != "task2" else _greedy_reference(model, tok)


def _engine_scores(zoo, task_id, state):
    from flexmerge_core.evaluation.task_eval import Evaluators

    return Evaluators(zoo, device="cpu", batch_size=2).task(task_id).evaluate(state)


def _import(source, out):
    from flexmerge_core.importers.hf_lm import import_lm_folder
    from flexmerge_core.pipeline import resolve_zoo

    import_lm_folder(source, out)
    return resolve_zoo(out)


def test_rank_outputs_equal_a_plain_loop_over_logits(llama_source, t5_source, tmp_path):
    """The adapters' batched, padded scoring = sum of token log-probabilities / length, for both families."""
    for source in (llama_source, t5_source):
        zoo = _import(source, tmp_path / source.name)
        model, tok = _load(source / "task0"), _tokenizer(source / "pretrained")
        held = zoo.heldout_set(0)
        outputs = zoo.architecture.forward(model, held.inputs)
        means, correct = _rank_reference(model, tok)
        for i, expected in enumerate(means):
            got = (outputs[i, :len(expected), 0] / outputs[i, :len(expected), 1]).tolist()
            assert got == pytest.approx(expected, abs=1e-5)
        assert zoo.task_kind(0).score(outputs, held.targets, held.head).tolist() == correct


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_zoo_end_to_end(family, llama_source, t5_source, tmp_path):
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.evaluation.evaluate import finetuned_state
    from flexmerge_core.pipeline import Pipeline, PlanSettings

    source = llama_source if family == "llama" else t5_source
    zoo = _import(source, tmp_path / "zoo")
    tok = _tokenizer(source / "pretrained")
    for t, task in enumerate(zoo.task_names):        # the engine scores the fine-tuned models like the loops
        assert _engine_scores(zoo, t, finetuned_state(zoo, t)).scores.tolist() == _reference(
            _load(source / task), tok, task)
    pipeline = Pipeline(zoo, PlanSettings("ta"), deploy_size="all")
    result = pipeline.curve("all")
    top = max(result.rows, key=lambda r: r["size"])
    assert top["size"] == 3 and top["accuracy"] == result.finetuned          # exact at size M
    assert result.rows[0]["metric"] == {"task0": "accuracy", "task1": "accuracy", "task2": "exact match"}
    for task in ("task0", "task2"):
        out = tmp_path / f"export-{task}"
        pipeline.export(2, out, task=task)
        reloaded = _load(out)
        deployment = build_deployment(zoo, pipeline.plan, pipeline.algorithm, 2, merger=pipeline.merger())
        t = zoo.task_names.index(task)
        engine = _engine_scores(zoo, t, deployment.encoder_state_dict(t))
        assert engine.scores.tolist() == _reference(reloaded, _tokenizer(out), task)
        row = next(r for r in pipeline.curve([2]).rows)
        assert row["accuracy"][task] == engine.value


def test_tied_embeddings_are_stored_counted_and_merged_once(t5_source, tmp_path):
    from flexmerge_core.pipeline import Pipeline, PlanSettings

    zoo = _import(t5_source, tmp_path / "zoo")
    model = _load(t5_source / "pretrained")
    assert "shared.weight" in zoo.param_names
    assert not {"lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} & set(zoo.param_names)
    plan = Pipeline(zoo, PlanSettings("ta")).plan
    assert plan.model_params == sum(p.numel() for p in model.parameters())     # parameters() lists tied ones once
    out = tmp_path / "export"
    Pipeline(zoo, PlanSettings("ta")).export(1, out, task="task1")
    merged = _load(out)
    assert merged.lm_head.weight.data_ptr() == merged.shared.weight.data_ptr()


def test_lora_task_vectors_equal_merge_and_unload(lora_source, tmp_path):
    from peft import PeftModel

    zoo = _import(lora_source, tmp_path / "zoo")
    base = _load(lora_source / "pretrained")
    base_state = {n: t.clone() for n, t in base.state_dict().items()}
    vectors = zoo.task_vectors(zoo.param_names)
    for t, task in enumerate(zoo.task_names):
        merged = PeftModel.from_pretrained(copy.deepcopy(base), lora_source / task).merge_and_unload().state_dict()
        adapted = 0
        for name in zoo.param_names:
            expected = merged[name] - base_state[name]
            torch.testing.assert_close(vectors[name][t], expected, atol=1e-6, rtol=0)
            adapted += bool(expected.abs().sum() > 0)
        targets = json.loads((lora_source / task / "adapter_config.json").read_text())["target_modules"]
        assert adapted == len(targets) * 2      # every target module of both layers, nothing else
        for name in zoo.param_names:
            torch.testing.assert_close(zoo.task_tensor(t, name), merged[name], atol=1e-6, rtol=0)


def test_lora_zoo_end_to_end(lora_source, tmp_path):
    from flexmerge_core.pipeline import Pipeline, PlanSettings

    zoo = _import(lora_source, tmp_path / "zoo")
    before = zoo.tensors_read
    zoo.task_vectors(["model.layers.0.mlp.up_proj.weight"], tasks=[0, 1])   # no adapter touches it: no read
    assert zoo.tensors_read == before
    pipeline = Pipeline(zoo, PlanSettings("ta"), deploy_size="all")
    result = pipeline.curve("all")
    assert max(result.rows, key=lambda r: r["size"])["accuracy"] == result.finetuned
    out = tmp_path / "export"
    pipeline.export(1.5, out, task="task1")
    engine = next(iter(pipeline.curve([1.5]).rows))["accuracy"]["task1"]
    reloaded = _reference(_load(out), _tokenizer(out), "task1")
    assert sum(reloaded) / len(reloaded) == engine


def test_added_tokens_refused_without_resize_vocab(llama_source, tmp_path, capsys):
    from flexmerge_core.cli import main
    from flexmerge_core.errors import ZooError
    from lm_zoos import with_added_tokens

    source = with_added_tokens(llama_source, tmp_path / "src", "task1", 3)
    with pytest.raises(ZooError, match=rf"task 'task1' has vocabulary size {VOCAB + 3}, the pretrained model "
                                       rf"{VOCAB}: tensor '(model.embed_tokens|lm_head).weight' has 3 added rows "
                                       r".* --resize-vocab"):
        _import(source, tmp_path / "zoo")
    assert main(["zoo", "import", str(source), "--out", str(tmp_path / "zoo")]) == 2
    assert "task 'task1'" in capsys.readouterr().err
    assert main(["zoo", "import", str(source), "--out", str(tmp_path / "zoo"), "--resize-vocab", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added_tokens"] == {"task1": 3}


def test_resize_vocab_merges_shared_rows_and_keeps_added_ones(llama_source, tmp_path):
    """MergeKit's rule: the shared vocabulary merges like any tensor, the 3 rows task1 added stay its own; its
    export loads with its vocabulary and tokenizer and scores as the engine does."""
    from flexmerge_core.deployment.deploy import build_deployment
    from flexmerge_core.deployment.export import load_deployment, save_deployment
    from flexmerge_core.evaluation.evaluate import finetuned_state
    from flexmerge_core.importers.hf_lm import import_lm_folder
    from flexmerge_core.pipeline import Pipeline, PlanSettings, resolve_zoo
    from lm_zoos import with_added_tokens

    source = with_added_tokens(llama_source, tmp_path / "src", "task1", 3)
    import_lm_folder(source, tmp_path / "zoo", resize_vocab=True)
    zoo = resolve_zoo(tmp_path / "zoo")
    tuned = _load(source / "task1")
    grown = ("model.embed_tokens.weight", "lm_head.weight")
    assert all(zoo.param_shapes[n] == (VOCAB, 32) and n in zoo.param_names for n in grown)
    assert sorted(zoo.added_rows(1)) == sorted(grown) and zoo.added_rows(0) == {}
    for name in grown:
        assert torch.equal(zoo.added_rows(1)[name], tuned.state_dict()[name][VOCAB:])
        assert torch.equal(zoo.task_tensor(1, name), tuned.state_dict()[name][:VOCAB])
    own_tok = _tokenizer(source / "task1")
    assert _engine_scores(zoo, 1, finetuned_state(zoo, 1)).scores.tolist() == _reference(tuned, own_tok, "task1")

    pipeline = Pipeline(zoo, PlanSettings("ta"), deploy_size="all")
    result = pipeline.curve("all")
    assert max(result.rows, key=lambda r: r["size"])["accuracy"] == result.finetuned
    for size in (1, 2):
        out = tmp_path / f"export-{size}"
        pipeline.export(size, out, task="task1")
        reloaded, tok = _load(out), _tokenizer(out)
        assert reloaded.config.vocab_size == VOCAB + 3 and len(tok) == VOCAB + 3
        deployment = build_deployment(zoo, pipeline.plan, pipeline.algorithm, size, merger=pipeline.merger())
        engine = _engine_scores(zoo, 1, deployment.encoder_state_dict(1))
        assert engine.scores.tolist() == _reference(reloaded, tok, "task1")
        assert pipeline.curve([size]).rows[0]["accuracy"]["task1"] == engine.value
    save_deployment(deployment, tmp_path / "deployment.safetensors")      # the whole deployment keeps them too
    pipeline.export(2, tmp_path / "streamed.safetensors")                  # streamed block by block: same bytes
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "deployment.safetensors").read_bytes()
    again = load_deployment(tmp_path / "deployment.safetensors")
    for t in range(3):
        expected = deployment.encoder_state_dict(t)
        assert all(torch.equal(v, expected[n]) for n, v in again.encoder_state_dict(t).items())
    assert again.encoder_state_dict(1)["lm_head.weight"].shape[0] == VOCAB + 3
    merged = _load(tmp_path / "export-1").state_dict()       # size 1: every block merged, TA lam = 1.5
    base = _load(source / "pretrained").state_dict()
    for name in grown:
        shared = [_load(source / t).state_dict()[name][:VOCAB] - base[name] for t in zoo.task_names]
        torch.testing.assert_close(merged[name][:VOCAB], base[name] + 1.5 * torch.stack(shared).mean(0),
                                   atol=1e-6, rtol=0)
        assert torch.equal(merged[name][VOCAB:], tuned.state_dict()[name][VOCAB:])


def test_cli_imports_language_model_folders(llama_source, tmp_path, capsys):
    from flexmerge_core.cli import main

    assert main(["zoo", "import", str(llama_source), "--out", str(tmp_path / "zoo"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == "hf_causal_lm" and report["tasks"] == {f"task{i}": "full" for i in range(3)}
    assert main(["zoo", "import", str(llama_source), "--out", str(tmp_path / "z2"), "--model", "ViT-B-32"]) == 2


def test_yaml_model_pool_spec(t5_source, tmp_path):
    """FusionBench's pool form (instantiate mappings, ignored bookkeeping keys) with our data specs."""
    from flexmerge_core.importers.lm_spec import import_lm_spec, is_lm_spec
    from flexmerge_core.pipeline import resolve_zoo

    spec = tmp_path / "pool.yaml"
    spec.write_text(f"""
_target_: fusion_bench.modelpool.Seq2SeqLMPool
_recursive_: false
models:
  _pretrained_: {t5_source / 'pretrained'}
  cola:
    _target_: transformers.AutoModelForSeq2SeqLM.from_pretrained
    pretrained_model_name_or_path: {t5_source / 'task0'}
  sst2: {t5_source / 'task1'}
tokenizer: google/flan-t5-base
data:
  cola: {{kind: text_classification_rank, source: {t5_source / 'data' / 'rank.jsonl'}, columns: {{input: text}}}}
""")
    assert is_lm_spec(spec)
    report = import_lm_spec(spec, tmp_path / "zoo")
    assert report.kind == "hf_seq2seq" and report.tasks == {"cola": "full", "sst2": "full"}
    zoo = resolve_zoo(tmp_path / "zoo")
    assert zoo.task_kind(0).name == "text_classification_rank" and zoo.heldout_set(1) is None
    spec.write_text(spec.read_text().replace(str(t5_source / "task1"), "someone/not-cached-model"))
    from flexmerge_core.errors import ZooError

    with pytest.raises(ZooError, match="model 'sst2': 'someone/not-cached-model' is neither a folder nor in the local"):
        import_lm_spec(spec, tmp_path / "zoo2")


def test_streamed_gram_is_bit_identical_to_whole_blocks(llama_source, lora_source, tmp_path, monkeypatch):
    """Large tensors are read in row slabs during planning; the Gram matrices do not change by a bit."""
    from flexmerge_core.planning import similarity
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.reused_buffer import ReusedBuffer

    monkeypatch.setattr(similarity, "GRAM_CHUNK_COLUMNS", 100)
    monkeypatch.setattr(similarity, "STREAM_SLAB", 300)
    monkeypatch.setattr(similarity, "STREAM_BYTES", 0)
    for source in (llama_source, lora_source):
        zoo = _import(source, tmp_path / source.name)
        buffer = ReusedBuffer()   # one for the pass, as block_similarities reads
        for block in build_blocks(zoo.param_names, zoo.param_shapes).blocks:
            whole = similarity.gram_matrix(zoo.task_vectors(block.params), torch.device("cpu"))
            assert torch.equal(similarity._streamed_gram(zoo, block.params, torch.device("cpu"), buffer), whole)


def test_dashboard_axis_for_text_metrics():
    """Charts label text zoos from the rows' metrics: exact match alone in %, mixed metrics normalised."""
    from dashboard.metric_axis import axis_for

    def row(metrics):
        return {"metric": metrics, "higher_is_better": {t: True for t in metrics}}

    alone = axis_for([row({"a": "exact match", "b": "exact match"})])
    assert (alone.title, alone.percent) == ("exact match (%)", True)
    mixed = axis_for([row({"a": "accuracy", "b": "exact match"})])
    assert mixed.normalized and mixed.title == "normalised score (% of fine-tuned)"


@pytest.mark.parametrize("page", [None, "pages/1_Explore.py", "pages/2_Compare.py"])
def test_dashboard_pages_render_a_text_zoo(page, llama_source, tmp_path, monkeypatch):
    """The app opens a language-model zoo; its charts are labelled from the tasks' metrics (mixed: normalised)."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from app_support import settled

    _import(llama_source, tmp_path / "zoo")
    monkeypatch.setenv("FLEXMERGE_ZOO", str(tmp_path / "zoo"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    if page:
        at.switch_page(page)
    settled(at)
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    if page == "pages/1_Explore.py":
        assert "normalised score" in json.dumps([str(e.proto) for e in at.get("plotly_chart")] + [m.label for m in at.metric])


def _loaded(zoo, state):
    """A transformers model of the zoo's architecture holding `state` (tied aliases follow their tensor)."""
    model = zoo.build_encoder()
    model.load_state_dict(state, strict=False)
    return model


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_staged_evaluation_reuses_stage_inputs_and_stays_exact(family, llama_source, t5_source, tmp_path):
    """T5: encoder | decoder; Llama: embeddings | layer 0 | layer 1 + norm + head. A change in later stages only
    re-runs those (the kept encoder output / hidden states are reused), and the scores equal a fresh
    evaluation and the plain loops over the logits."""
    from flexmerge_core.evaluation.evaluate import finetuned_state
    from flexmerge_core.evaluation.forward import StagedEncoder
    from flexmerge_core.evaluation.task_eval import TaskEvaluator, heldout_of

    source = llama_source if family == "llama" else t5_source
    zoo = _import(source, tmp_path / "zoo")
    runner = StagedEncoder(zoo.build_encoder(), "cpu", zoo.architecture)
    stages = runner.num_stages
    assert stages == (3 if family == "llama" else 2)
    if family == "t5":
        assert {runner.stage_of(n) for n in zoo.state_names if n.startswith(("encoder.", "shared."))} == {0}
        assert {runner.stage_of(n) for n in zoo.state_names if n.startswith("decoder.")} == {1}
    else:
        assert [runner.stage_of(n) for n in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                                             "model.layers.1.mlp.up_proj.weight", "model.norm.weight",
                                             "lm_head.weight")] == [0, 1, 2, 2, 2]
    pretrained = {n: zoo.pretrained_tensor(n) for n in zoo.state_names}
    tok = _tokenizer(source / "pretrained")
    for t, task in enumerate(zoo.task_names):
        tuned = finetuned_state(zoo, t)
        requests = zoo.heldout_set(t).inputs
        _, kept = runner.features(runner.split(pretrained), requests, record=range(stages))
        for stage in range(1, stages):      # raw outputs (log-likelihoods, generated ids) from a kept stage input
            mixed = {n: tuned[n] if runner.stage_of(n) >= stage else pretrained[n] for n in zoo.state_names}
            resumed, _ = runner.features(runner.split(mixed), kept[stage], start=stage)
            torch.testing.assert_close(resumed, runner.features(runner.split(mixed), requests)[0], atol=1e-6, rtol=0)
            if task == "task0":     # the kept hidden states are what the stage reads: shifted, log-likelihoods move
                shifted, _ = runner.features(runner.split(mixed), (requests, kept[stage][1] + 1), start=stage)
                assert not torch.allclose(shifted, resumed)
        evaluator = TaskEvaluator(runner, zoo.task_kind(t), heldout_of(zoo, t), batch_size=2, budget_bytes=1 << 30)
        evaluator.evaluate(pretrained, [0] * stages)
        assert evaluator.stages_run == stages
        signature, state = [0] * stages, dict(pretrained)
        for stage in range(stages - 1, 0, -1):          # the fine-tune's tensors, from the last stage backwards
            state.update({n: tuned[n] for n in zoo.state_names if runner.stage_of(n) == stage})
            signature[stage] = 1
            before = evaluator.stages_run
            staged = evaluator.evaluate(state, list(signature))
            assert evaluator.stages_run - before == stages - stage          # only stage `stage` onwards re-ran
            fresh = TaskEvaluator(runner, zoo.task_kind(t), heldout_of(zoo, t), batch_size=2).evaluate(state)
            torch.testing.assert_close(staged.scores, fresh.scores, atol=1e-6, rtol=0)
            assert staged.scores.tolist() == _reference(_loaded(zoo, state), tok, task)
        before = evaluator.stages_run
        evaluator.evaluate(tuned, [1] * stages)                              # stage 0 changed: everything re-runs
        assert evaluator.stages_run - before == stages


def test_incremental_text_curve_equals_evaluating_every_size_afresh(t5_source, tmp_path):
    from flexmerge_core.pipeline import Pipeline, PlanSettings

    pipeline = Pipeline(_import(t5_source, tmp_path / "zoo"), PlanSettings("ta", order="right-to-left"))
    staged = pipeline.curve("all", use_cache=False, activation_budget=1 << 30)
    afresh = pipeline.curve("all", use_cache=False, incremental=False)
    assert [r["size"] for r in staged.rows] == [r["size"] for r in afresh.rows]
    for a, b in zip(staged.rows, afresh.rows):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    assert staged.stats["stages_run"] < afresh.stats["stages_run"]
