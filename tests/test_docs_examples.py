"""The extension examples in docs/ARCHITECTURE.md run as written (a user copies them into a package)."""
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"


def _plugin_module(marker: str) -> dict:
    """Execute the python block of the doc that starts with `# my_flexmerge_plugin/<marker>`."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    source = next(b for b in blocks if b.startswith(f"# my_flexmerge_plugin/{marker}"))
    namespace: dict = {"__name__": f"my_flexmerge_plugin.{marker[:-3]}"}
    exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


def test_the_mlp_adapter_example_stages_agree_with_its_forward():
    adapter = _plugin_module("mlp.py")["MlpAdapter"]()
    config = adapter.check_config({"sizes": [6, 5, 4, 3]})
    torch.manual_seed(0)
    module = adapter.build(config)
    split = adapter.stages(module)
    x = torch.randn(2, 6)
    staged = x
    for stage in range(split.num_stages):
        staged = split.run(staged, stage)
    assert torch.allclose(staged, module(x))
    assert [split.stage_of(n) for n in module.state_dict()] == [0, 0, 1, 1, 2, 2]
    assert adapter.feature_dim(config, {}) == 3


def test_the_regression_kind_example_registers_and_scores_squared_errors():
    from flexmerge_core.tasks.registry import _REGISTRY, register_task_kind

    kind_class = _plugin_module("regression.py")["SquaredErrorRegression"]
    kind = kind_class()
    head = {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([0.5])}
    scores = kind.score(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([3.0, 2.0]), head)
    assert torch.allclose(scores, torch.tensor([0.25, 0.25]))
    saved = dict(_REGISTRY.items)
    try:
        assert register_task_kind(kind).metric == "MSE" and not kind.higher_is_better
    finally:
        _REGISTRY.items.clear()
        _REGISTRY.items.update(saved)
