"""A stand-in for the task-vectors authors' `src.modeling` (ImageEncoder, ClassificationHead), for tests and
benchmarks that write checkpoints the way that release does: `torch.save(module)` pickles naming classes
no one else can import. Installed in sys.modules only while files are saved."""
import contextlib
import sys
import types

import torch


class ImageEncoder(torch.nn.Module):
    """Wraps a CLIP model under `model` (the release's layout)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.train_preprocess = None


class ClassificationHead(torch.nn.Linear):
    """A linear head with the release's `normalize` flag (CLIP zero-shot heads take unit features)."""

    def __init__(self, normalize, weights):
        super().__init__(weights.shape[1], weights.shape[0])
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(torch.zeros(weights.shape[0]))


@contextlib.contextmanager
def authors_modeling(*extra_classes):
    """`src.modeling` importable (with these classes and any `extra_classes`) inside the block only."""
    module = types.ModuleType("src.modeling")
    saved = {cls: (cls.__module__, cls.__qualname__) for cls in (ImageEncoder, ClassificationHead, *extra_classes)}
    for cls in saved:
        cls.__module__, cls.__qualname__ = "src.modeling", cls.__name__
        setattr(module, cls.__name__, cls)
    sys.modules["src"], sys.modules["src.modeling"] = types.ModuleType("src"), module
    try:
        yield module
    finally:
        del sys.modules["src.modeling"], sys.modules["src"]
        for cls, (where, name) in saved.items():
            cls.__module__, cls.__qualname__ = where, name
