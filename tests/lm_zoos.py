"""Tiny language-model sources in real formats (save_pretrained folders, PEFT adapters, a tokenizer built
here), for the language-model tests. Fine-tunes are the pretrained weights plus seeded noise: what the
tests check (exact scores, exports, task vectors) does not depend on how the weights were trained."""
import copy
import json
from pathlib import Path

import torch

WORDS = "the a cat dog sat on mat yes no good bad is it true false red blue green what color sky grass".split()
SPECIALS = ["<pad>", "</s>", "<s>", "<unk>"]
VOCAB = len(SPECIALS) + len(WORDS)
RANK_ROWS = [{"text": "is the sky blue", "choices": ["yes", "no"], "label": 0},
             {"text": "is the grass red", "choices": ["yes", "no", "good"], "label": 1},
             {"text": "the cat sat on the mat", "choices": ["true", "false"], "label": "true"},
             {"text": "is it good", "choices": ["good bad", "no"], "label": 0},
             {"text": "what color is the dog", "choices": ["red", "blue", "green"], "label": 2}]
GEN_ROWS = [{"q": "what color is the sky", "a": "blue"}, {"q": "what color is the grass", "a": ["green", "the green"]},
            {"q": "is the cat red", "a": "no"}]


def tokenizer(seq2seq: bool):
    """A WordLevel tokenizer: T5 style appends </s>, Llama style prepends <s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>" if seq2seq else "<s> $A",
                                                       special_tokens=[("</s>", 1), ("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")


def llama_config(**extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                       **extra)


def t5_config():
    from transformers import T5Config

    return T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _model(config):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_config(config).eval()


def write_data(folder: Path, kinds: dict[str, str]) -> None:
    """data/<task>.json specs over two jsonl files (rank rows; generation rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rank.jsonl").write_text("\n".join(json.dumps(r) for r in RANK_ROWS))
    (folder / "gen.jsonl").write_text("\n".join(json.dumps(r) for r in GEN_ROWS))
    for task, kind in kinds.items():
        spec = ({"kind": kind, "source": "rank.jsonl", "columns": {"input": "text"}}
                if kind == "text_classification_rank" else
                {"kind": kind, "source": "gen.jsonl", "columns": {"input": "q", "answer": "a"}, "max_new_tokens": 4})
        (folder / f"{task}.json").write_text(json.dumps(spec))


KINDS = {"task0": "text_classification_rank", "task1": "text_classification_rank",
         "task2": "text_generation_exact_match"}


def full_finetunes(root: Path, config, shard: bool) -> Path:
    """root/pretrained + root/task0..2 save_pretrained folders (+ tokenizer, data specs)."""
    torch.manual_seed(0)
    base = _model(config)
    base.save_pretrained(root / "pretrained", max_shard_size="20KB" if shard else "5GB")
    tokenizer(config.is_encoder_decoder).save_pretrained(root / "pretrained")
    for t in range(3):
        tuned = copy.deepcopy(base)
        with torch.no_grad():
            for p in tuned.parameters():
                p.add_(0.05 * torch.randn_like(p))
        tuned.save_pretrained(root / f"task{t}")
    write_data(root / "data", KINDS)
    return root


def lora_adapters(root: Path) -> Path:
    """root/pretrained (tiny Llama) + root/task0..2 PEFT LoRA adapters (one with rsLoRA, different targets)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = _model(llama_config())
    base.save_pretrained(root / "pretrained")
    tokenizer(False).save_pretrained(root / "pretrained")
    settings = [dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                dict(r=2, lora_alpha=4, target_modules=["o_proj", "down_proj"], use_rslora=True),
                dict(r=4, lora_alpha=16, target_modules=["q_proj", "gate_proj", "up_proj"])]
    for t, options in enumerate(settings):
        torch.manual_seed(10 + t)
        peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **options))
        peft_model.save_pretrained(root / f"task{t}")
    write_data(root / "data", KINDS)
    return root
