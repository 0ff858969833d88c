"""The stored open_clip tower layouts are what open_clip builds, and opening their zoos imports no model library."""
import subprocess
import sys
from pathlib import Path

import pytest

from flexmerge_core.architectures import open_clip_layouts
from flexmerge_core.architectures.base import ArchitectureAdapter
from flexmerge_core.architectures.registry import get_architecture, state_aliases, state_layout
from flexmerge_core.errors import ZooError

REPO = Path(__file__).resolve().parents[1]
KIND = "open_clip_model"


def _built(name: str) -> dict:
    """The tower's layout as open_clip builds it (on the meta device), whatever is stored."""
    return ArchitectureAdapter.layout(get_architecture(KIND), {"name": name})


@pytest.mark.parametrize("name", [n for names, _ in open_clip_layouts.TOWERS.values() for n in names])
def test_every_stored_tower_is_open_clips_own_under_each_of_its_names(name):
    import open_clip

    assert open_clip.__version__ == open_clip_layouts.OPEN_CLIP_VERSION
    stored = state_layout(KIND, {"name": name})
    assert list(stored.items()) == list(_built(name).items())   # names, shapes, dtypes, order
    assert state_aliases(KIND, {"name": name}) == {} == ArchitectureAdapter.tied(get_architecture(KIND), {"name": name})


def test_another_open_clip_version_builds_the_layout(monkeypatch):
    calls = []
    monkeypatch.setattr(open_clip_layouts, "_installed_version", lambda: "0.0.1")
    monkeypatch.setattr(ArchitectureAdapter, "layout", lambda self, config: calls.append(config) or {})
    assert open_clip_layouts.stored_layout("ViT-B-32") is None
    assert state_layout(KIND, {"name": "ViT-B-32"}) == {} and calls == [{"name": "ViT-B-32"}]


def test_config_checks_are_the_same_for_stored_and_built_towers():
    for config, message in (({"name": "ViT-B-32", "width": 3}, "takes config"), ({}, "takes config"),
                            ({"name": "hf-hub:laion/CLIP-ViT-B-32"}, "offline"),
                            ({"name": "ViT-Q-99"}, "not an open_clip model name")):
        with pytest.raises(ZooError, match=message):
            state_layout(KIND, config)
    assert open_clip_layouts.stored_layout("RN50") is None
    assert list(state_layout(KIND, {"name": "RN50"})) == list(_built("RN50"))


def test_laying_out_a_stored_tower_and_importing_the_cli_import_no_model_library():
    code = ("import sys; from flexmerge_core import cli; from flexmerge_core.architectures.registry import "
            "state_layout, state_aliases; config = {'name': 'ViT-L-14', 'quick_gelu': True}; "
            "assert len(state_layout('open_clip_model', config)) == 296 and state_aliases('open_clip_model', config) == {}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'open_clip', 'transformers', 'torchvision', "
            "'scipy', 'pandas', 'plotly', 'streamlit', 'ray'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16"])
def test_a_stored_tower_says_an_input_fits_exactly_when_its_forward_takes_it(name):
    import torch

    from flexmerge_core.architectures.registry import construct

    adapter, config = get_architecture(KIND), {"name": name}
    shapes = {n: shape for n, (shape, _) in state_layout(KIND, config).items()}
    tower = construct(KIND, config, "meta").eval()
    for shape in ((3, 224, 224), (3, 224, 239), (3, 240, 224), (1, 224, 224), (3, 160, 160), (3, 8, 8), (224, 224),
                  (4, 224, 224)):
        try:
            with torch.no_grad():
                adapter.forward(tower, torch.empty((1, *shape), device="meta"))
            takes = True
        except Exception:   # whatever the module raises on an input it cannot take
            takes = False
        assert adapter.input_fits(config, shapes, shape) == takes, shape
