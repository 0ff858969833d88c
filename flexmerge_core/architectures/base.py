"""The contract between the engine and one model family: `ArchitectureAdapter`.

Why one interface: the zoo (layout, feature width), evaluation (forward, stages) and importers
(preprocessing) each need a little model-family knowledge; asking one adapter per manifest
`architecture.kind` keeps that knowledge in one file per family, and the engine family-agnostic.
An adapter is stateless (one instance per kind); everything it answers depends only on the
manifest's `config` (or on a module it built).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from flexmerge_core.errors import ZooError


@dataclass(frozen=True)
class StageSplit:
    """A forward pass cut into `num_stages` consecutive stages of one module.

    `stage_of(name)` is the first stage whose output depends on state_dict entry `name` (every entry has
    one); `run(x, stage)` maps the input of `stage` to its output (the last stage's output is the features).
    Stage values may be tensors or tuples / dicts of them (e.g. requests with hidden states).
    Along a curve only the stages from the first changed one onwards are re-run.
    """
    num_stages: int
    stage_of: Callable[[str], int]
    run: Callable[[Any, int], Any]


class ArchitectureAdapter:
    """One model family. Subclasses set `kind` and implement `build`; the rest has safe defaults."""

    kind: str = ""
    native_export: bool = False     # True: a task's model is exported as `native_files` (a folder), not a state dict

    def check_config(self, config: dict) -> dict:
        """The manifest's config, validated (ZooError naming the bad key); default: any object."""
        if not isinstance(config, dict):
            raise ZooError(f"zoo.json: architecture '{self.kind}' needs a config object, got {config!r}")
        return config

    def build(self, config: dict) -> torch.nn.Module:
        """The module, randomly initialised on the current default device (callers use `torch.device`)."""
        raise NotImplementedError

    def layout(self, config: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """{name: (shape, dtype)} of the stored state_dict, in its order; built on `meta`, so no memory is used.

        Tied aliases (`tied`) are left out: a checkpoint stores a tied tensor once, under its first name.
        """
        with torch.device("meta"):
            module = self.build(config)
        aliases = tied_aliases(module)
        return {name: (tuple(t.shape), t.dtype) for name, t in module.state_dict().items() if name not in aliases}

    def tied(self, config: dict) -> dict[str, str]:
        """{alias: stored name} of state_dict entries that are the same tensor (tied embeddings)."""
        with torch.device("meta"):
            return tied_aliases(self.build(config))

    def unmerged(self, config: dict) -> tuple[str, ...]:
        """Regexes of parameters never merged (tied weights, built-in heads); the manifest's own are added."""
        return ()

    def feature_dim(self, config: dict, shapes: dict[str, tuple[int, ...]]) -> Optional[int]:
        """Width of what `forward` yields (a head's input), from the checkpoint's shapes; None = unknown."""
        return None

    def stages(self, module: torch.nn.Module) -> Optional[StageSplit]:
        """The module's forward in stages, or None: the whole `forward` is one stage."""
        return None

    def forward(self, module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The whole forward pass, yielding what a head consumes."""
        return module(inputs)

    def input_fits(self, config: dict, shapes: dict[str, tuple[int, ...]], input_shape: tuple[int, ...]) -> bool:
        """True when one example of `input_shape` surely fits the model, known from the checkpoint's `shapes`
        alone; False: not known so, and the zoo runs a forward pass on the meta device to find out (building the
        module: its library's import; its exception words the error)."""
        return False

    def input_transform(self, config: dict) -> Optional[Callable]:
        """Preprocessing of one raw input (e.g. a PIL image) into a model input; None = data is preprocessed."""
        return None

    def expected_input(self, config: dict) -> Optional[dict]:
        """What one preprocessed input looks like, e.g. {"channels": 3, "image_size": 224}; None = unknown."""
        return None

    def native_files(self, config: dict, state: dict[str, torch.Tensor],
                     source: Path) -> dict[str, Callable[[Path], None]]:
        """{file name: write(path)} of one task's model as a folder in the family's own format (`native_export`).

        `state` holds the stored names (no tied aliases); `source` is the folder of the zoo's pretrained
        checkpoint (tokenizer and other side files live there). The caller publishes the files all or none.
        """
        raise NotImplementedError


def tied_aliases(module: torch.nn.Module) -> dict[str, str]:
    """{alias: first name} for state_dict entries holding the very tensor of an earlier entry.

    Why identity: HF ties embeddings by sharing one Parameter (T5's `shared` with both embed_tokens and
    lm_head; `tie_word_embeddings`), so the state_dict names it several times; one is stored and merged,
    the others follow it.
    """
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(tensor), name)
        if owner != name:
            aliases[name] = owner
    return aliases
