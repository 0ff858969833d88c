"""Model zoos: a pretrained model plus M fine-tuned task models, opened lazily (see docs/INTERFACES.md).

`open_zoo(path) -> Zoo` validates a zoo folder; `write_zoo(...)` writes one atomically.
"""
from flexmerge_core.zoo.loader import Zoo, open_zoo
from flexmerge_core.zoo.writer import write_zoo

__all__ = ["Zoo", "open_zoo", "write_zoo"]
