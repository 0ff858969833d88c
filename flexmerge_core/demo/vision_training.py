"""The training steps of a demo zoo build: pretraining and per-task fine-tuning, one torch thread each.

Why a module of its own: the builder runs these steps on worker processes (`demo.workers`), so each
is a plain function of picklable inputs whose result depends on nothing else: the same job gives the
same bits in the main process or in any worker. Pretraining can be split into data-parallel shards:
every optimiser step averages the gradients of `shards` equal slices of one mini-batch, either in this
process one slice after the other or across processes with an all-reduce; both add the same two
numbers per coordinate, so the two ways give identical weights.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flexmerge_core.demo import vision_tasks
from flexmerge_core.demo.seeding import cosine_lr, rng, torch_generator
from flexmerge_core.architectures.registry import construct

GradientSync = Callable[[list[torch.Tensor]], list[torch.Tensor]]  # this shard's grads -> the batch mean's


def train(forward, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
          batch_size: int, gen: torch.Generator, weight_decay: float, clip_norm: float,
          shards: int = 1, shard: Optional[int] = None, sync: Optional[GradientSync] = None,
          label_smoothing: float = 0.0) -> None:
    """AdamW with warm-up + cosine decay and gradient-norm clipping on random mini-batches from `gen`.
    Weight decay applies to matrices only, not to LayerNorm gains, biases or the class token (the usual
    ViT practice): decayed gains would spring back in every fine-tune, a shared direction in every
    task vector that would make unrelated tasks look alike.

    shards > 1: the batch is cut into `shards` interleaved slices. With `sync` (data-parallel), this
    process computes slice `shard` and `sync` turns its gradients into the sum over all slices;
    without it, every slice is computed here and summed in slice order."""
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)
    size = min(batch_size, len(x))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        idx = torch.randint(len(x), (size,), generator=gen)

        def grads_of(part: torch.Tensor) -> list[torch.Tensor]:
            loss = F.cross_entropy(forward(x[part]), y[part], label_smoothing=label_smoothing)
            return list(torch.autograd.grad(loss, params))

        if sync is not None:
            total = sync(grads_of(idx[shard::shards]))
        else:
            total = grads_of(idx[0::shards])
            for k in range(1, shards):
                total = [a + b for a, b in zip(total, grads_of(idx[k::shards]))]
        for p, g in zip(params, total):
            p.grad = g / shards
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()


@torch.no_grad()
def features(encoder: torch.nn.Module, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    return torch.cat([encoder(x[i:i + chunk]) for i in range(0, len(x), chunk)])


@torch.no_grad()
def accuracy(encoder: torch.nn.Module, head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    encoder.eval()
    return float((head(features(encoder, x)).argmax(1) == y).float().mean())


def encoder_of(config) -> torch.nn.Module:
    return construct("open_clip_vit", config.architecture)


def render_pretraining(n: int, seed: int, index: int, heldout: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of pretraining glyphs (normalised images, labels), seeded by its index and split."""
    images, labels = vision_tasks.sample_pretraining(n, rng(seed, 3 if heldout else 0, index), vision_tasks.load_fonts())
    return vision_tasks.normalise(images), labels


def render_task(name: str, n_train: int, n_heldout: int, seed: int) -> tuple[np.ndarray, ...]:
    """A task's training and held-out images and labels (normalised), seeded by the task."""
    task, fonts = vision_tasks.TASKS_BY_NAME[name], vision_tasks.load_fonts()
    index = vision_tasks.task_index(name)
    train_x, train_y = vision_tasks.sample_task(task, n_train, rng(seed, 10, index), fonts)
    test_x, test_y = vision_tasks.sample_task(task, n_heldout, rng(seed, 11, index), fonts)
    return vision_tasks.normalise(train_x), train_y, vision_tasks.normalise(test_x), test_y


def pretrain(config, seed: int, data: Sequence[np.ndarray], shard: Optional[int] = None,
             sync: Optional[GradientSync] = None) -> tuple[dict[str, torch.Tensor], float]:
    """The pretrained encoder's state dict (glyph classification through a throw-away head) and its
    held-out accuracy; data = (images, labels, held-out images, held-out labels)."""
    x, y, test_x, test_y = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    torch.manual_seed(int(rng(seed, 1, 0).integers(2**62)))
    encoder = encoder_of(config)
    head = torch.nn.Linear(config.architecture["output_dim"], len(vision_tasks.PRETRAIN_GLYPHS))
    encoder.train()
    train(lambda b: head(encoder(b)), [*encoder.parameters(), *head.parameters()], x, y,
          config.pretrain_steps, config.pretrain_lr, config.batch_size, torch_generator(seed, 2, 0),
          config.pretrain_weight_decay, config.clip_norm, config.pretrain_shards, shard, sync)
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}, accuracy(encoder, head, test_x, test_y)


def finetune(pretrained: dict[str, torch.Tensor], name: str, config, seed: int,
             data: Sequence[np.ndarray]) -> dict:
    """One task: a linear probe on frozen features, then a full fine-tune; the write_zoo task entries
    it produces (state_dict, head, finetuned_accuracy). Both use label smoothing: without it the
    easiest way to lower the loss of a solved task is to scale every feature up, the same move in
    every task.

    No weight decay here: decay pulls every task towards zero along the same direction (-theta_pre),
    which would make unrelated task vectors look alike."""
    train_x, train_y, test_x, test_y = (torch.from_numpy(np.ascontiguousarray(a)) for a in data)
    task = vision_tasks.TASKS_BY_NAME[name]
    index = vision_tasks.task_index(name)
    encoder = encoder_of(config)
    encoder.load_state_dict(pretrained)
    torch.manual_seed(int(rng(seed, 12, index).integers(2**62)))
    head = torch.nn.Linear(config.architecture["output_dim"], len(task.classes))
    encoder.eval()
    train(head, list(head.parameters()), features(encoder, train_x), train_y, config.probe_steps, config.probe_lr,
          config.batch_size, torch_generator(seed, 13, index), 0.0, config.clip_norm,
          label_smoothing=config.label_smoothing)
    encoder.train()
    train(lambda b: head(encoder(b)), [*encoder.parameters(), *head.parameters()], train_x, train_y,
          config.finetune_steps, config.finetune_lr, config.finetune_batch_size,
          torch_generator(seed, 14, index), 0.0, config.clip_norm, label_smoothing=config.label_smoothing)
    return {
        "state_dict": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
        "head": {"weight": head.weight.detach().clone(), "bias": head.bias.detach().clone()},
        "finetuned_accuracy": accuracy(encoder, head, test_x, test_y),
    }
