"""The command line: `python -m flexmerge_core <command> ...`.

Contract (DESIGN.md): `--json` prints exactly one JSON document on stdout; progress goes to stderr;
exit 0 on success, 2 with a one-line `error: ...` on bad input (any FlexMergeError or argparse error).
Each command is a small handler that parses options and calls the library; no engine logic lives here.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from flexmerge_core.errors import FlexMergeError

Handler = Callable[[argparse.Namespace], int]


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

    build = zoo_sub.add_parser("build-demo", help="build (or reuse) the embedded demo zoo")
    build.add_argument("--out", default=None, help="folder to write the zoo to (default: cache/demo-zoo)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild even if a valid zoo exists")
    build.set_defaults(handler=_cmd_zoo_build_demo)

    info = zoo_sub.add_parser("info", help="tasks, parameters, blocks, fine-tuned accuracies")
    info.add_argument("--zoo", required=True, help="zoo folder, or 'demo'")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_cmd_zoo_info)


def _add_plan_options(p) -> None:
    p.add_argument("--zoo", required=True, help="zoo folder, or 'demo'")
    p.add_argument("--algorithm", required=True)
    p.add_argument("--granularity", default="component")
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
    from flexmerge_core.zoo.demo import build_demo_zoo

    path = build_demo_zoo(out=args.out, seed=args.seed, force=args.force,
                          progress=stderr_progress("demo zoo"))
    print(path)
    return 0


def _cmd_zoo_info(args: argparse.Namespace) -> int:
    raise FlexMergeError("zoo info is not available yet")


def _cmd_plan(args: argparse.Namespace) -> int:
    raise FlexMergeError("plan is not available yet")


def _cmd_curve(args: argparse.Namespace) -> int:
    raise FlexMergeError("curve is not available yet")


def _cmd_export(args: argparse.Namespace) -> int:
    raise FlexMergeError("export is not available yet")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FlexMergeError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
