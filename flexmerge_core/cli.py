"""The command line: `python -m flexmerge_core <command> ...`.

Contract (docs/ARCHITECTURE.md): `--json` prints exactly one JSON document on stdout; progress goes to stderr;
exit 0 on success, 2 with a one-line `error: ...` on bad input (any FlexMergeError or argparse error).
Each command is a small handler that parses options and calls the library; no engine logic lives here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import weakref
from typing import Callable, Sequence

from flexmerge_core.errors import FlexMergeError
from flexmerge_core.pipeline import DEMO_ZOOS
from flexmerge_core.planning.baselines import BASELINES
from flexmerge_core.planning.blocks import PRESETS

Handler = Callable[[argparse.Namespace], int]
_OPEN_BARS: "weakref.WeakSet" = weakref.WeakSet()   # unfinished progress bars, erased before an error line


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

    imp = zoo_sub.add_parser("import", help="convert a research-layout folder of image-encoder checkpoints into a zoo")
    imp.add_argument("source", help="folder with <Task>/finetuned.pt, <Task>/zeroshot.pt, optional head_<Task>.pt; "
                                    "or a folder with a zoo.json naming torch/prefixed/pickled files")
    imp.add_argument("--out", required=True, help="zoo folder to write (replaced atomically)")
    imp.add_argument("--model", default=None, help="the checkpoints' model name, e.g. ViT-B-32 (research layout)")
    imp.add_argument("--pretrained", default=None, help="pretrained checkpoint (default: the <Task>/zeroshot.pt files)")
    imp.add_argument("--data", default=None, help="held-out data: <DATA>/<Task>/<class>/*.png or <DATA>/<Task>.safetensors")
    imp.add_argument("--templates", default=None, help="zero-shot prompts: 'simple' (default), 'openai' or a file")
    imp.add_argument("--head-input", default="normalized", choices=["normalized", "raw"])
    imp.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI-trained weights)")
    imp.add_argument("--trust-pickle", action="store_true",
                     help="allow pickled whole-module files (unpickling runs code from the file); converted once")
    imp.add_argument("--name", default=None)
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(handler=_cmd_zoo_import)


def _cmd_zoo_import(args: argparse.Namespace) -> int:
    from flexmerge_core.importers.research import import_folder

    report = import_folder(args.source, args.out, args.model, pretrained=args.pretrained, data=args.data,
                           templates=args.templates, trust_pickle=args.trust_pickle,
                           quick_gelu=True if args.quick_gelu else None, head_input=args.head_input,
                           name=args.name, progress=stderr_progress("import"))
    if args.json:
        emit_json(report.to_json())
    else:
        print("\n".join(report.lines()))
    return 0


def _add_plan_options(p) -> None:
    p.add_argument("--zoo", required=True, help="zoo folder, or 'demo' / 'demo-text'")
    p.add_argument("--algorithm", required=True)
    p.add_argument("--granularity", default=None, choices=list(PRESETS),
                   help="block granularity (default: component; parameter for --baseline channel-merging)")
    p.add_argument("--linkage", default="min", choices=["min", "max", "avg", "uni"])
    p.add_argument("--order", default="greedy", choices=["greedy", "left-to-right", "right-to-left", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=None, help="comma-separated subset of task names")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m flexmerge_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_zoo_commands(sub)

    plan = sub.add_parser("plan", help="the greedy merge plan (ordered merge events)")
    _add_plan_options(plan)
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=_cmd_plan)

    curve = sub.add_parser("curve", help="accuracy at a list of sizes or at every achievable size")
    _add_plan_options(curve)
    curve.add_argument("--sizes", default="all", help="comma-separated budgets, or 'all'")
    curve.add_argument("--baseline", default=None, choices=list(BASELINES),
                       help="a baseline's curve instead of FlexMerge's plan (same cached machinery)")
    curve.add_argument("--json", action="store_true")
    curve.set_defaults(handler=_cmd_curve)

    export = sub.add_parser("export", help="write a merged deployment (or one task's model) as safetensors")
    _add_plan_options(export)
    export.add_argument("--size", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--task", default=None, help="write one standalone state dict for this task")
    export.set_defaults(handler=_cmd_export)
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


def _pipeline_from_args(args: argparse.Namespace, deploy_size=None):
    """The Pipeline of the shared plan options; the plan comes from the on-disk cache when known.

    deploy_size: the largest deployment the command will build ("all" = M; None: planning only), so
    the memory guard refuses before anything is loaded."""
    from flexmerge_core.pipeline import Pipeline, PlanSettings, resolve_zoo

    settings = PlanSettings(algorithm=args.algorithm, granularity=args.granularity, linkage=args.linkage,
                            order=args.order, seed=args.seed,
                            tasks=tuple(n.strip() for n in (args.tasks or "").split(",") if n.strip()),
                            baseline=getattr(args, "baseline", None))
    settings.make_algorithm()   # an unknown algorithm or option fails before the zoo is opened
    return Pipeline(resolve_zoo(args.zoo), settings, progress=stderr_progress("similarity"), deploy_size=deploy_size)


def _cmd_plan(args: argparse.Namespace) -> int:
    pipeline = _pipeline_from_args(args)
    zoo, plan = pipeline.zoo, pipeline.plan
    if args.json:
        emit_json({"num_tasks": plan.num_tasks, "model_params": plan.model_params, "min_size": plan.min_size,
                   "tasks": zoo.task_names, "blocks": plan.blocks, "events": plan.to_json()["events"]})
        return 0
    names = zoo.task_names
    print(f"{plan.num_tasks} tasks, {len(plan.blocks)} blocks, {plan.model_params} parameters per model; "
          f"sizes {plan.max_size:g} .. {plan.min_size:.4f} ({plan.linkage} linkage, {plan.order} order)")
    for e in plan.events:
        a = "+".join(names[t] for t in e.group_a)
        b = "+".join(names[t] for t in e.group_b)
        print(f"{e.step:5d}  {plan.blocks[e.block]:<40s}  {a} | {b}  sim {e.similarity:+.4f}  "
              f"size {e.size_after:.4f}")
    return 0


def _cmd_curve(args: argparse.Namespace) -> int:
    from flexmerge_core.evaluation.curve import parse_sizes

    sizes = parse_sizes(args.sizes)
    pipeline = _pipeline_from_args(args, deploy_size="all")   # a curve starts from all M models kept
    zoo = pipeline.zoo
    result = pipeline.curve(sizes, progress=stderr_progress("curve"))
    if args.json:
        emit_json({"rows": result.rows, "finetuned": result.finetuned})
        return 0
    print(f"{'budget':>8s} {'size':>8s} {'avg acc':>8s} {'norm acc':>8s}  " + " ".join(f"{t:>10.10s}" for t in zoo.task_names))
    for row in result.rows:
        print(f"{row['size_budget']:8.4f} {row['size']:8.4f} {row['avg_accuracy']:8.4f} "
              f"{row['avg_normalized_accuracy']:8.4f}  " + " ".join(f"{row['accuracy'][t]:10.4f}" for t in zoo.task_names))
    print("fine-tuned: " + ", ".join(f"{t} {a:.4f}" for t, a in result.finetuned.items()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from flexmerge_core.deployment.export import recipe_path
    from flexmerge_core.evaluation.curve import parse_sizes

    sizes = parse_sizes(args.size, option="--size")
    if sizes == "all" or len(sizes) != 1:
        raise FlexMergeError(f"--size takes one number of model units, got {args.size!r}")
    if args.task is not None:   # fail before the plan is built
        from flexmerge_core.pipeline import resolve_zoo

        known = args.tasks.split(",") if args.tasks else resolve_zoo(args.zoo).task_names
        if args.task not in [name.strip() for name in known]:
            raise FlexMergeError(f"--task: unknown task '{args.task}' (choose from {', '.join(known)})")
    pipeline = _pipeline_from_args(args, deploy_size=sizes[0])
    recipe = pipeline.export(sizes[0], args.out, task=args.task, zoo_path=args.zoo if args.zoo in DEMO_ZOOS else None)
    what = f"task '{args.task}'" if args.task else f"{len(pipeline.zoo.task_names)} tasks"
    print(f"wrote {args.out} ({what}, size {recipe['size']:.4f} for budget {recipe['budget']:g}); "
          f"recipe {recipe_path(args.out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FlexMergeError as exc:
        for bar in list(_OPEN_BARS):
            bar.close()  # leave=False: erases its line, so the error is the one line left on stderr
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2


def run() -> int:
    """The `flexmerge` command and `python -m flexmerge_core`: `main` with the process set up first.

    Idle OpenMP threads sleep instead of spinning (read once when torch loads; the handlers import it
    later): on small shared machines spinning threads of concurrent processes slowed torch down many
    times over.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return main()
