"""The training steps of the text demo build: tokenizer, model, pretraining, per-task fine-tuning.

Why plain functions of picklable inputs (as in vision_training): the builder runs them as jobs on worker
processes, one torch thread each, and a job gives the same bits wherever it runs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flexmerge_core.demo import text_tasks
from flexmerge_core.demo.seeding import cosine_lr, rng, torch_generator


def build_tokenizer():
    """A word-level tokenizer over the generated vocabulary (whitespace split, [BOS] before every input),
    as a PreTrainedTokenizerFast: what the zoo ships beside its pretrained weights."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(text_tasks.vocabulary())}
    core = Tokenizer(WordLevel(ids, unk_token="[UNK]"))
    core.pre_tokenizer = WhitespaceSplit()
    core.post_processor = TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", ids["[BOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def model_config(architecture: dict):
    from transformers import LlamaConfig

    words = text_tasks.vocabulary()
    return LlamaConfig(vocab_size=len(words), pad_token_id=words.index("[PAD]"), bos_token_id=words.index("[BOS]"),
                       eos_token_id=words.index("[EOS]"), tie_word_embeddings=False, **architecture)


def build_model(architecture: dict):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(model_config(architecture))


def encode(tokenizer, sentences: Sequence[Sequence[str]]) -> list[list[int]]:
    """[BOS] + the sentence's token ids, as the zoo's tokenizer reads the sentence's text."""
    return tokenizer([" ".join(s) for s in sentences])["input_ids"]


def pad(rows: list[list[int]], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [n, L] and the attention mask."""
    length = length or max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def _optimizer(model, lr: float, weight_decay: float):
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=lr)


def _train(model, batches, loss_of, steps: int, lr: float, weight_decay: float, clip_norm: float) -> None:
    """AdamW, warm-up + cosine, clipped gradients; `batches(step)` -> a batch, `loss_of(model, batch)` -> loss."""
    opt = _optimizer(model, lr, weight_decay)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        loss = loss_of(model, batches(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()


def _next_token_loss(model, batch) -> torch.Tensor:
    ids, mask = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def pretrain(config, seed: int) -> tuple[dict[str, torch.Tensor], float]:
    """The pretrained LM's state dict (next-token prediction over generated reviews) and its held-out
    next-token accuracy."""
    tokenizer = build_tokenizer()
    train_ids, train_mask = pad(encode(tokenizer, text_tasks.sample_pretraining(
        config.pretrain_sentences, rng(seed, 0, 0), config.negation)))
    test_ids, test_mask = pad(encode(tokenizer, text_tasks.sample_pretraining(500, rng(seed, 3, 0), config.negation)))
    torch.manual_seed(int(rng(seed, 1, 0).integers(2**62)))
    model = build_model(config.architecture)
    gen = torch_generator(seed, 2, 0)

    def batches(step):
        idx = torch.randint(len(train_ids), (config.batch_size,), generator=gen)
        return train_ids[idx], train_mask[idx]

    _train(model, batches, _next_token_loss, config.pretrain_steps, config.pretrain_lr, config.pretrain_weight_decay,
           config.clip_norm)
    model.eval()
    with torch.no_grad():
        pred = model(input_ids=test_ids, attention_mask=test_mask).logits[:, :-1].argmax(-1)
    valid = test_mask[:, 1:] == 1
    accuracy = float((pred == test_ids[:, 1:])[valid].float().mean())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, accuracy


def task_examples(name: str, n_train: int, n_heldout: int, seed: int, negation: float):
    """(train prompts, train labels, held-out prompts, held-out labels) of one task, seeded by the task."""
    task, index = text_tasks.TASKS_BY_NAME[name], text_tasks.task_index(name)
    train = text_tasks.sample_task(task, n_train, rng(seed, 10, index), negation)
    heldout = text_tasks.sample_task(task, n_heldout, rng(seed, 11, index), negation)
    return (*train, *heldout)


def choice_ids(tokenizer, choices: Sequence[str]) -> torch.Tensor:
    """The token id of each answer choice (the demo's choices are single words, hence single tokens)."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"demo answer choices must be single tokens: {choices}")
    return torch.tensor([i[0] for i in ids])


def finetune(pretrained: dict[str, torch.Tensor], name: str, config, seed: int,
             prompts: Sequence[Sequence[str]], labels: np.ndarray) -> dict[str, torch.Tensor]:
    """One task, fully fine-tuned on the rank-classification objective: cross-entropy over the task's
    answer choices' logits after the prompt. Why not over the whole vocabulary: every task would then
    also learn "push down every other word", one shared direction in every task vector (measured: the
    LM head's block cosine between unrelated tasks 0.45) that makes unrelated tasks look alike."""
    task, index = text_tasks.TASKS_BY_NAME[name], text_tasks.task_index(name)
    tokenizer = build_tokenizer()
    model = build_model(config.architecture)
    model.load_state_dict(pretrained)
    rows = encode(tokenizer, prompts)
    ids, mask = pad(rows)
    last = torch.tensor([len(r) - 1 for r in rows])
    targets = torch.as_tensor(labels)
    answers = choice_ids(tokenizer, task.choices)
    gen = torch_generator(seed, 14, index)

    def batches(step):
        idx = torch.randint(len(ids), (config.finetune_batch_size,), generator=gen)
        return ids[idx], mask[idx], last[idx], targets[idx]

    def loss_of(model, batch):
        ids_, mask_, last_, y = batch
        logits = model(input_ids=ids_, attention_mask=mask_).logits
        return F.cross_entropy(logits[torch.arange(len(ids_)), last_][:, answers], y,
                               label_smoothing=config.label_smoothing)

    _train(model, batches, loss_of, config.finetune_steps, config.finetune_lr, 0.0, config.clip_norm)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
