"""The engine's layout rule: data flows down the stages, so no module imports a module of a later stage.

Why a test: an import that climbs back up a stage (the zoo loader building the demo, an importer
using the deployment cache) is how import circles and hidden couplings crept in before; this keeps
the layout honest as model families, task kinds and executors are added.
"""
import ast
from pathlib import Path

import flexmerge_core

PACKAGE = Path(flexmerge_core.__file__).parent

# Stage of each top-level part of the engine; a module may import its own stage and earlier ones.
STAGES = {
    "errors": 0, "cache": 0, "plugins": 0, "outputs": 0, "inputs": 0, "machine": 0, "byte_budget_lru": 0,
    "reused_buffer": 0, "__init__": 0,
    "architectures": 1, "tasks": 1,
    "zoo": 2,
    "algorithms": 3, "importers": 3,
    "planning": 4,
    "deployment": 5, "resources": 5,
    "evaluation": 6,
    "backend": 7,
    "pipeline": 8, "demo": 8, "findings": 8, "sweep": 8,
    "studio": 9,
    "cli": 10, "__main__": 10,
}


def _part(module: str) -> str:
    """'flexmerge_core.planning.plan' -> 'planning'; 'flexmerge_core' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str) -> set:
    """Every flexmerge_core module named by an import in the file (function-level imports too)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("flexmerge_core")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("flexmerge_core"):
                found.add(base if base != "flexmerge_core" else f"flexmerge_core.{node.names[0].name}")
    return found


def test_every_part_of_the_engine_has_a_stage():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__"))}
    assert parts <= set(STAGES), f"give these a stage: {sorted(parts - set(STAGES))}"


def test_no_module_imports_a_later_stage():
    climbing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        own = STAGES[_part(module)]
        for target in sorted(_imports(path, module)):
            if STAGES[_part(target)] > own:
                climbing.append(f"{module} -> {target}")
    assert not climbing, "imports that climb a stage:\n" + "\n".join(climbing)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from flexmerge_core.pipeline import resolve_zoo\nfrom . import cache\n")
    assert _imports(source, "flexmerge_core.zoo.probe") == {"flexmerge_core.pipeline", "flexmerge_core.zoo"}
