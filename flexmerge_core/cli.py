"""The command line: `python -m flexmerge_core <command> ...`.

Contract (docs/ARCHITECTURE.md): `--json` prints exactly one JSON document on stdout; progress goes to stderr;
exit 0 on success, 2 with a one-line `error: ...` on bad input (any FlexMergeError or argparse error).
Each command is a small handler that parses options and calls the library; no engine logic lives here.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import weakref
from typing import Callable, Sequence

from flexmerge_core.deployment.footprint import DTYPES, MEGABYTE, parse_megabytes, parse_sizes
from flexmerge_core.errors import FlexMergeError
from flexmerge_core.pipeline import DEMO_ZOOS
from flexmerge_core.resources import check_memory
from flexmerge_core.planning.baselines import BASELINES
from flexmerge_core.planning.blocks import PRESETS

Handler = Callable[[argparse.Namespace], int]
_OPEN_BARS: "weakref.WeakSet" = weakref.WeakSet()   # unfinished progress bars, erased before an error line
RECOMMEND_ALGORITHMS = ("ta", "ties", "emr")   # recommend's default field: the baseline, its trimmed form, a mask method


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2 (its own default is multi-line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def emit_json(document) -> None:
    """Print the one JSON document of a --json command."""
    json.dump(document, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def stderr_progress(label: str):
    """A progress callback (done, total, message) that draws a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int, message: str = "") -> None:
        nonlocal bar
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False)
            _OPEN_BARS.add(bar)
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()
            bar = None

    return progress


def _add_zoo_commands(sub) -> None:
    zoo = sub.add_parser("zoo", help="build, inspect or import model zoos")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, parser_class=_Parser)

    build = zoo_sub.add_parser("build-demo", help="build (or reuse) an embedded demo zoo")
    build.add_argument("--text", action="store_true",
                       help="the text demo (tiny Llama, 8 text tasks; 'demo-text') instead of the vision demo")
    build.add_argument("--out", default=None,
                       help="folder to write the zoo to (default: cache/demo-zoo, or cache/demo-text-zoo with --text)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild even if a valid zoo exists")
    build.set_defaults(handler=_cmd_zoo_build_demo)

    info = zoo_sub.add_parser("info", help="tasks, parameters, blocks, fine-tuned accuracies")
    info.add_argument("--zoo", required=True, help="zoo folder, or 'demo' / 'demo-text'")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_cmd_zoo_info)

    imp = zoo_sub.add_parser("import", help="convert a zoo spec, HuggingFace folders or research checkpoints into a zoo")
    imp.add_argument("source", help="a zoo spec (SPEC.yaml: models + datasets by local path or HF id in the local cache); "
                                    "a folder with pretrained/ and <task>/ HuggingFace save_pretrained folders "
                                    "(image encoders; language models, also PEFT LoRA adapters, data/<task>.json); "
                                    "a folder with <Task>/finetuned.pt, <Task>/zeroshot.pt, optional head_<Task>.pt; "
                                    "or a folder with a zoo.json naming torch/prefixed/pickled files")
    imp.add_argument("--out", required=True, help="zoo folder to write (replaced atomically; an existing folder "
                                                   "only when it is empty or a zoo, unless --force)")
    imp.add_argument("--model", default=None, help="the checkpoints' model name, e.g. ViT-B-32 (research layout)")
    imp.add_argument("--pretrained", default=None, help="pretrained checkpoint (default: the <Task>/zeroshot.pt files)")
    imp.add_argument("--data", default=None, help="held-out data: <DATA>/<Task>/<class>/*.png or <DATA>/<Task>.safetensors "
                                                  "(HuggingFace folders also <DATA>/<Task>.parquet or save_to_disk folders)")
    imp.add_argument("--max-examples", type=int, default=None,
                     help="HuggingFace sources: a seeded random subset of at most N held-out examples per task")
    imp.add_argument("--seed", type=int, default=None, help="seed of --max-examples' subset (default 0)")
    imp.add_argument("--templates", default=None, help="zero-shot prompts: 'simple' (default), 'openai' or a file")
    imp.add_argument("--head-input", default="normalized", choices=["normalized", "raw"])
    imp.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI-trained weights)")
    imp.add_argument("--trust-pickle", action="store_true",
                     help="allow pickles that call code outside the structural reader's allow-list (unpickling "
                          "runs code from the file); converted once. Pickled modules and heads need no flag")
    imp.add_argument("--resize-vocab", action="store_true",
                     help="language models: fine-tunes may have added tokens; the shared vocabulary is merged, "
                          "each task keeps its added embedding/output rows (and its tokenizer) unmerged")
    imp.add_argument("--name", default=None)
    imp.add_argument("--force", action="store_true", help="replace an existing --out folder that is not a zoo")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(handler=_cmd_zoo_import)


def _cmd_zoo_import(args: argparse.Namespace) -> int:
    from flexmerge_core.importers.dispatch import import_source

    if args.max_examples is not None and args.max_examples < 1:
        raise FlexMergeError(f"--max-examples must be >= 1, got {args.max_examples}")
    report = import_source(args.source, args.out, args.model, pretrained=args.pretrained, data=args.data,
                           templates=args.templates, trust_pickle=args.trust_pickle,
                           quick_gelu=True if args.quick_gelu else None, head_input=args.head_input,
                           max_examples=args.max_examples, seed=args.seed,
                           name=args.name, progress=stderr_progress("import"), force=args.force,
                           resize_vocab=args.resize_vocab)
    if args.json:
        emit_json(report.to_json())
    else:
        print("\n".join(report.lines()))
    return 0


def _add_plan_options(p, one_algorithm: bool = True) -> None:
    p.add_argument("--zoo", required=True, help="zoo folder, or 'demo' / 'demo-text'")
    if one_algorithm:
        p.add_argument("--algorithm", required=True)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="an algorithm option (repeatable), checked against its declared range")
    p.add_argument("--granularity", default=None, choices=list(PRESETS),
                   help="block granularity (default: component; parameter for --baseline channel-merging)")
    p.add_argument("--linkage", default="min", choices=["min", "max", "avg", "uni"])
    p.add_argument("--order", default="greedy", choices=["greedy", "left-to-right", "right-to-left", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=None, help="comma-separated subset of task names")
    p.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="storage dtype the byte counts assume (and export writes); default: the zoo's own")


def _add_budget_mb(p, sizes_option: str, help_text: str, required: bool = False) -> None:
    """--budget-mb, exclusive with the command's size option (both give the budget, in other units)."""
    group = p.add_mutually_exclusive_group(required=required)
    if sizes_option == "--sizes":
        group.add_argument("--sizes", default="all", help="comma-separated budgets in model units, or 'all'")
    else:
        group.add_argument("--size", default=None, help="size budget in model units (x one model)")
    group.add_argument("--budget-mb", default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m flexmerge_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_zoo_commands(sub)

    plan = sub.add_parser("plan", help="the greedy merge plan (ordered merge events)")
    _add_plan_options(plan)
    plan.add_argument("--budget-mb", default=None, help="also show the deployment of at most this many MB")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=_cmd_plan)

    curve = sub.add_parser("curve", help="accuracy at a list of sizes or at every achievable size")
    _add_plan_options(curve)
    _add_budget_mb(curve, "--sizes", "comma-separated budgets in MB (instead of --sizes); rows gain bytes/megabytes")
    curve.add_argument("--baseline", default=None, choices=list(BASELINES),
                       help="a baseline's curve instead of FlexMerge's plan (same cached machinery)")
    curve.add_argument("--json", action="store_true")
    curve.set_defaults(handler=_cmd_curve)

    sweep = sub.add_parser("sweep", help="every algorithm (and baseline) at every size, as jobs, into one table")
    sweep.add_argument("--zoo", required=True, help="zoo folder (a path every worker sees), or 'demo'")
    sweep.add_argument("--algorithms", required=True, help="comma-separated algorithm names, e.g. ta,ties,emr")
    sweep.add_argument("--sizes", default="all", help="comma-separated budgets, or 'all' (every achievable size)")
    sweep.add_argument("--baselines", default="", help=f"comma-separated baselines ({', '.join(BASELINES)})")
    sweep.add_argument("--tasks", default=None, help="comma-separated subset of task names")
    sweep.add_argument("--ray-address", default=None,
                       help="'auto' (a local Ray instance) or ray://host:10001 (default: $FLEXMERGE_RAY_ADDRESS, "
                            "else local worker processes)")
    sweep.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: one per core; 0: run in this process)")
    sweep.add_argument("--out", required=True, help="the table to write (parquet); finished cells are kept in "
                                                   "OUT.parts/ until it is written, so a rerun resumes")
    sweep.add_argument("--json", action="store_true", help="print the run's counts as JSON")
    sweep.set_defaults(handler=_cmd_sweep)

    export = sub.add_parser("export", help="write a merged deployment (or one task's model) as safetensors")
    _add_plan_options(export)
    _add_budget_mb(export, "--size", "the largest deployment of at most this many MB (in --dtype)", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--task", default=None, help="write one standalone state dict for this task")
    export.add_argument("--json", action="store_true")
    export.set_defaults(handler=_cmd_export)

    rec = sub.add_parser("recommend", help="the deployment to use: smallest within P points, or best under N MB")
    _add_plan_options(rec, one_algorithm=False)
    rec.add_argument("--algorithms", default=",".join(RECOMMEND_ALGORITHMS),
                     help="comma-separated algorithms to choose among")
    goal = rec.add_mutually_exclusive_group(required=True)
    goal.add_argument("--within-points", type=float, default=None,
                      help="smallest deployment at most this many accuracy points below the fine-tuned models")
    goal.add_argument("--max-mb", type=float, default=None, help="most accurate deployment of at most this many MB")
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(handler=_cmd_recommend)

    found = sub.add_parser("findings", help="the paper's findings on this zoo: reproduced, not reproduced or inconclusive")
    found.add_argument("--zoo", required=True, help="zoo folder, or 'demo'")
    found.add_argument("--algorithms", default=None,
                       help="comma-separated algorithms whose rankings are compared (default: ta,ties,emr)")
    found.add_argument("--algorithm", default=None,
                       help="the algorithm of the gain, baseline, order and linkage findings (default: ta)")
    found.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired tests")
    found.add_argument("--json", action="store_true")
    found.set_defaults(handler=_cmd_findings)
    return parser


def _cmd_zoo_build_demo(args: argparse.Namespace) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared, loaded CPU spinning steals the cores
    # the build needs (several times slower). Read once when torch loads, hence before importing it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.text:
        from flexmerge_core.demo.text import build_text_demo_zoo as build
    else:
        from flexmerge_core.demo.vision import build_demo_zoo as build

    path = build(out=args.out, seed=args.seed, force=args.force,
                 progress=stderr_progress("text demo zoo" if args.text else "demo zoo"))
    print(path)
    report = json.loads((path / "zoo.json").read_text())["recipe"]["report"]
    for key, value in report.items():
        print(f"  {key}: {value}")
    return 0


def _cmd_zoo_info(args: argparse.Namespace) -> int:
    from flexmerge_core.pipeline import describe_zoo, resolve_zoo
    from flexmerge_core.zoo.summary import summary_lines

    summary = describe_zoo(resolve_zoo(args.zoo))
    if args.json:
        emit_json(summary)
    else:
        print("\n".join(summary_lines(summary)))
    return 0


def _settings_from_args(args: argparse.Namespace, algorithm: str, strict: bool = True):
    """PlanSettings of the shared plan options for `algorithm`; --param values read by each option's
    declared kind and range (strict: every --param must be one of this algorithm's options)."""
    from flexmerge_core.algorithms.registry import parse_options, split_assignments
    from flexmerge_core.pipeline import PlanSettings

    settings = PlanSettings(algorithm=algorithm, granularity=args.granularity, linkage=args.linkage,
                            order=args.order, seed=args.seed,
                            hyperparameters=parse_options(algorithm, split_assignments(args.param), strict),
                            tasks=tuple(n.strip() for n in (args.tasks or "").split(",") if n.strip()),
                            baseline=getattr(args, "baseline", None))
    settings.make_algorithm()   # an unknown algorithm or option fails before the zoo is opened
    return settings


def _pipeline_from_args(args: argparse.Namespace, deploy_size=None):
    """The Pipeline of the shared plan options; the plan comes from the on-disk cache when known.

    deploy_size: the largest deployment the command will build ("all" = M; None: planning only), so
    the memory guard refuses before anything is loaded."""
    from flexmerge_core.pipeline import Pipeline, resolve_zoo

    settings = _settings_from_args(args, args.algorithm)
    return Pipeline(resolve_zoo(args.zoo), settings, progress=stderr_progress("similarity"), deploy_size=deploy_size)


def _megabytes(pipeline, megabytes: float, dtype) -> dict:
    """The deployment a budget in MB selects: its size budget in model units, size, bytes."""
    budget = pipeline.budget_for_megabytes(megabytes, dtype)
    part = pipeline.plan.partition_at(budget)
    stored = pipeline.footprint(dtype).partition_bytes(part)
    return {"budget_mb": megabytes, "size_budget": budget, "size": part.size, "budget_met": stored <= megabytes * MEGABYTE,
            "num_events": part.num_events, "bytes": stored, "megabytes": stored / MEGABYTE}


def _cmd_plan(args: argparse.Namespace) -> int:
    budget_mb = None if args.budget_mb is None else parse_megabytes(args.budget_mb, single=True)[0]
    pipeline = _pipeline_from_args(args)
    zoo, plan = pipeline.zoo, pipeline.plan
    events = plan.events   # built (or read from the cache) before anything is printed: its errors come alone
    model_bytes = pipeline.footprint(args.dtype).model_bytes
    budget = None if budget_mb is None else _megabytes(pipeline, budget_mb, args.dtype)
    if args.json:
        doc = {"num_tasks": plan.num_tasks, "model_params": plan.model_params, "min_size": plan.min_size,
               "tasks": zoo.task_names, "blocks": plan.blocks, "events": plan.to_json()["events"],
               "dtype": args.dtype, "model_bytes": model_bytes}
        emit_json(doc if budget is None else {**doc, "budget": budget})
        return 0
    names = zoo.task_names
    print(f"{plan.num_tasks} tasks, {len(plan.blocks)} blocks, {plan.model_params} parameters per model "
          f"({model_bytes / MEGABYTE:.2f} MB in {args.dtype or 'the zoo dtypes'}); "
          f"sizes {plan.max_size:g} .. {plan.min_size:.4f} ({plan.linkage} linkage, {plan.order} order)")
    if budget is not None:
        print(f"at most {budget_mb:g} MB: size {budget['size']:.4f} ({budget['megabytes']:.2f} MB, "
              f"{budget['num_events']} events)" + ("" if budget["budget_met"] else ", the smallest; it does not fit"))
    for e in events:
        a = "+".join(names[t] for t in e.group_a)
        b = "+".join(names[t] for t in e.group_b)
        print(f"{e.step:5d}  {plan.blocks[e.block]:<40s}  {a} | {b}  sim {e.similarity:+.4f}  "
              f"size {e.size_after:.4f}")
    return 0


def _cmd_curve(args: argparse.Namespace) -> int:
    budgets_mb = None if args.budget_mb is None else parse_megabytes(args.budget_mb)
    sizes = parse_sizes(args.sizes) if budgets_mb is None else None
    pipeline = _pipeline_from_args(args, deploy_size="all")   # a curve starts from all M models kept
    zoo = pipeline.zoo
    if budgets_mb is not None:
        sizes = [pipeline.budget_for_megabytes(mb, args.dtype) for mb in budgets_mb]
    result = pipeline.curve(sizes, progress=stderr_progress("curve"))
    rows = pipeline.with_bytes(result.rows, args.dtype)
    if budgets_mb is not None:
        rows = [{**row, "budget_mb": mb} for row, mb in zip(rows, budgets_mb)]
    if args.json:
        # bytes appear when asked for (--budget-mb / --dtype): the plain document stays as it was
        asked = budgets_mb is not None or args.dtype is not None
        emit_json({"rows": rows if asked else result.rows, "finetuned": result.finetuned})
        return 0
    print(f"{'budget':>8s} {'size':>8s} {'MB':>9s} {'avg acc':>8s} {'norm acc':>8s}  "
          + " ".join(f"{t:>10.10s}" for t in zoo.task_names))
    for row in rows:
        print(f"{row['size_budget']:8.4f} {row['size']:8.4f} {row['megabytes']:9.3f} {row['avg_accuracy']:8.4f} "
              f"{row['avg_normalized_accuracy']:8.4f}  " + " ".join(f"{row['accuracy'][t]:10.4f}" for t in zoo.task_names))
    print("fine-tuned: " + ", ".join(f"{t} {a:.4f}" for t, a in result.finetuned.items()))
    return 0


def _names(text: str) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _cmd_sweep(args: argparse.Namespace) -> int:
    from flexmerge_core.backend.executors import make_executor
    from flexmerge_core.pipeline import resolve_zoo
    from flexmerge_core.sweep import run_sweep

    sizes = parse_sizes(args.sizes)
    unknown = [b for b in _names(args.baselines) if b not in BASELINES]
    if unknown:
        raise FlexMergeError(f"--baselines: unknown baseline '{unknown[0]}' (known: {', '.join(BASELINES)})")
    if not _names(args.algorithms):
        raise FlexMergeError("--algorithms: name at least one algorithm, e.g. ta,ties,emr")
    zoo = resolve_zoo(args.zoo, progress=stderr_progress("demo zoo"))
    with make_executor(args.ray_address, args.workers) as executor:
        result = run_sweep(zoo, _names(args.algorithms), sizes, _names(args.baselines), _names(args.tasks),
                           executor=executor, out=args.out, progress=stderr_progress(f"sweep ({executor.name})"))
    if args.json:
        emit_json(result.stats)
    else:
        stats = result.stats
        print(f"wrote {args.out}: {len(result.table)} rows, {stats['cells']} cells ({stats['resumed']} from an "
              f"earlier run's parts, {stats['jobs_computed']} jobs computed on {stats['executor']} with "
              f"{stats['workers']} workers)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flexmerge_core.deployment.export import file_tensor_bytes, recipe_path

    budget_mb = None if args.budget_mb is None else parse_megabytes(args.budget_mb, single=True)[0]
    if budget_mb is None:
        sizes = parse_sizes(args.size, option="--size")
        if sizes == "all" or len(sizes) != 1:
            raise FlexMergeError(f"--size takes one number of model units, got {args.size!r}")
    if args.task is not None:   # fail before the plan is built
        from flexmerge_core.pipeline import resolve_zoo

        known = args.tasks.split(",") if args.tasks else resolve_zoo(args.zoo).task_names
        if args.task not in [name.strip() for name in known]:
            raise FlexMergeError(f"--task: unknown task '{args.task}' (choose from {', '.join(known)})")
    if budget_mb is not None:
        pipeline = _pipeline_from_args(args, deploy_size=None)
        budget = pipeline.budget_for_megabytes(budget_mb, args.dtype)
        check_memory(pipeline.zoo, budget, pipeline.spec)
    else:
        budget = sizes[0]
        pipeline = _pipeline_from_args(args, deploy_size=budget)
    recipe = pipeline.export(budget, args.out, task=args.task, zoo_path=args.zoo if args.zoo in DEMO_ZOOS else None,
                             dtype=args.dtype)
    stored = pipeline.footprint(args.dtype).budget_bytes(pipeline.plan, budget)
    if args.json:
        emit_json({"out": str(args.out), "recipe_file": str(recipe_path(args.out)), "task": args.task,
                   "budget": recipe["budget"], "budget_mb": budget_mb, "size": recipe["size"],
                   "budget_met": recipe["budget_met"], "dtype": args.dtype, "bytes": stored, "megabytes": stored / MEGABYTE,
                   "file_tensor_bytes": file_tensor_bytes(args.out)})
        return 0
    what = f"task '{args.task}'" if args.task else f"{len(pipeline.zoo.task_names)} tasks"
    print(f"wrote {args.out} ({what}, size {recipe['size']:.4f} for budget {recipe['budget']:g}, "
          f"{stored / MEGABYTE:.2f} MB of merged parameters in {args.dtype or 'the zoo dtypes'}); "
          f"recipe {recipe_path(args.out)}")
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from flexmerge_core.algorithms.registry import split_assignments
    from flexmerge_core.pipeline import recommend, resolve_zoo

    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    choices = [_settings_from_args(args, name, strict=False) for name in names]
    used = {k for c in choices for k, _ in c.hyperparameters}
    unknown = sorted(set(split_assignments(args.param)) - used)
    if unknown:
        raise FlexMergeError(f"--param: none of {', '.join(names)} has an option {unknown[0]!r}")
    if args.max_mb is not None:
        parse_megabytes(str(args.max_mb), option="--max-mb", single=True)
    doc = recommend(resolve_zoo(args.zoo), choices, within_points=args.within_points, max_mb=args.max_mb,
                    dtype=args.dtype, progress=stderr_progress("curve"))
    if args.json:
        emit_json(doc)
        return 0
    best = doc["recommendation"]
    goal = (f"within {args.within_points:g} points of the fine-tuned models' {100 * doc['finetuned_avg']:.2f}%"
            if args.within_points is not None else f"at most {args.max_mb:g} MB")
    if best is None:
        print(f"no deployment of {', '.join(names)} is {goal}")
    else:
        print(f"{goal}: {best['algorithm']} at {best['size']:.4f}x ({best['megabytes']:.2f} MB), "
              f"{_accuracy_text(best)}")
    for name, row in doc["knees"].items():
        print(f"knee of {name}: " + ("none (no point above the chord)" if row is None else
                                     f"{row['size']:.4f}x ({row['megabytes']:.2f} MB), {_accuracy_text(row)}"))
    return 0


def _cmd_findings(args: argparse.Namespace) -> int:
    from flexmerge_core.findings import DEFAULT_ALGORITHMS, check_options, reproduce_findings
    from flexmerge_core.pipeline import DEFAULT_ALGORITHM, resolve_zoo

    names = (DEFAULT_ALGORITHMS if args.algorithms is None
             else [n.strip() for n in args.algorithms.split(",") if n.strip()])
    algorithm = args.algorithm or DEFAULT_ALGORITHM
    check_options(names, algorithm, args.alpha)
    doc = reproduce_findings(resolve_zoo(args.zoo), names, algorithm, args.alpha, progress=stderr_progress("findings"))
    if args.json:
        emit_json(doc)
        return 0
    print(f"zoo {doc['zoo']} ({len(doc['tasks'])} tasks), paired tests at alpha = {doc['alpha']:g}, "
          f"95% intervals")
    for finding in doc["findings"]:
        print(f"\n{finding['title']}: {finding['verdict'].upper()}\n  claim: {finding['claim']}\n"
              f"  {finding['summary']}")
    return 0


def _accuracy_text(row: dict) -> str:
    interval = "" if row["ci_low"] is None else f" (95% interval {100 * row['ci_low']:.2f}-{100 * row['ci_high']:.2f}%)"
    return f"average accuracy {100 * row['avg_accuracy']:.2f}%{interval}"


class _StdoutFailed(Exception):
    """A write to standard output failed (the reader went away, a full disk, a closed stream)."""

    def __init__(self, error: OSError):
        super().__init__(error)
        self.error = error


class _GuardedStdout:
    """sys.stdout while a command runs: its failures are told apart from those of the command's own files."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, method: str, *args):
        if self._stream is None:   # started with standard output closed (`>&-`)
            raise _StdoutFailed(OSError(errno.EBADF, "standard output is closed"))
        try:
            return getattr(self._stream, method)(*args)
        except OSError as exc:
            raise _StdoutFailed(exc) from exc

    def write(self, text: str) -> int:
        return self._call("write", text)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _discard_stdout(stream) -> None:
    """Point the real standard output at /dev/null, so the interpreter's last flush of what is still
    buffered neither fails again nor prints 'Exception ignored' (in-process streams are left alone)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _hold_closed_stdout() -> None:
    """Started with file descriptor 1 closed: park /dev/null on it, so no file the command opens gets
    number 1 (where C libraries' prints and child processes' output would land in it)."""
    try:
        os.fstat(1)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != 1:
            os.dup2(devnull, 1)
            os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit 0 on success; 2 with one `error: ...` line on bad input or when the output
    cannot be written; 141 (as a process ended by SIGPIPE) without a word when the reader of the
    output went away (`... | head`)."""
    real_stdout = sys.stdout
    if real_stdout is None:
        _hold_closed_stdout()
    sys.stdout = _GuardedStdout(real_stdout)
    try:
        args = build_parser().parse_args(argv)
        code = args.handler(args)
        sys.stdout.flush()   # inside the guard: a failure at the interpreter's final flush would be a traceback
        return code
    except FlexMergeError as exc:
        return _error_line(str(exc))
    except _StdoutFailed as failed:
        _discard_stdout(real_stdout)
        if isinstance(failed.error, BrokenPipeError):
            return 128 + signal.SIGPIPE
        return _error_line(f"cannot write to standard output: {failed.error.strerror or failed.error}")
    finally:
        sys.stdout = real_stdout


def _error_line(message: str) -> int:
    for bar in list(_OPEN_BARS):
        bar.close()  # leave=False: erases its line, so the error is the one line left on stderr
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def run() -> int:
    """The `flexmerge` command and `python -m flexmerge_core`: `main` with the process set up first.

    Idle OpenMP threads sleep instead of spinning (read once when torch loads; the handlers import it
    later): on small shared machines spinning threads of concurrent processes slowed torch down many
    times over.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return main()
