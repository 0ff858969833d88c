"""Tiny HuggingFace CLIP zoos and datasets in the real on-disk formats, written with transformers/datasets.

A pretrained `CLIPModel` (save_pretrained, with a CLIPTokenizer built from a vocab.json + merges.txt of
a few tokens and a preprocessor_config.json), fine-tuned `CLIPVisionModel` folders (one sharded with
max_shard_size), a parquet file and a save_to_disk folder of images with ClassLabel names.
"""
import json
import string
from pathlib import Path

import torch

CLASSES = {"alpha": ["cat", "dog"], "beta": ["red", "blue", "green"], "gamma": ["photo", "tooth"]}
PREPROCESSOR = {"crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_convert_rgb": True,
                "do_normalize": True, "do_rescale": True, "do_resize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 1 / 255,
                "size": {"shortest_edge": 32}}


def write_tokenizer(folder: Path) -> int:
    """A CLIP BPE vocabulary of single letters (plus word-final forms) and a few merges; returns its size."""
    chars = list(string.ascii_lowercase) + ["."]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("a", "t</w>"), ("p", "h"), ("ph", "o"), ("t", "o"), ("o", "f</w>"), ("d", "o")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return len(vocab)


def tiny_clip_config(vocab_size: int):
    from transformers import CLIPConfig

    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                vocab_size=vocab_size, max_position_embeddings=24, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  patch_size=8, image_size=32)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def write_hf_zoo(root: Path, seed: int = 0, tasks=tuple(CLASSES)) -> dict[str, Path]:
    """root/pretrained (CLIPModel) + root/<task> (CLIPVisionModel, the second one sharded)."""
    from transformers import CLIPModel, CLIPVisionModel

    torch.manual_seed(seed)
    pretrained = root / "pretrained"
    pretrained.mkdir(parents=True)
    config = tiny_clip_config(write_tokenizer(pretrained))
    clip = CLIPModel(config).eval()
    clip.save_pretrained(pretrained)
    (pretrained / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    folders = {"_pretrained_": pretrained}
    base = clip.vision_model.state_dict()
    for i, task in enumerate(tasks):
        model = CLIPVisionModel(config.vision_config)
        model.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in base.items()})
        folders[task] = root / task
        model.save_pretrained(folders[task], **({"max_shard_size": "20KB"} if i == 1 else {}))
    return folders


def images_and_labels(count: int, num_classes: int, seed: int):
    """PIL images of odd sizes (so resize and crop both act), class-dependent colours."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(count):
        label = i % num_classes
        height, width = 36 + 3 * (i % 4), 41 + 5 * (i % 3)
        base = torch.tensor([50 + 70 * label, 120, 200 - 60 * label], dtype=torch.float32)
        pixels = (base + 40 * torch.rand(height, width, 3, generator=generator)).clamp(0, 255).to(torch.uint8)
        images.append(Image.fromarray(pixels.numpy()))
        labels.append(label)
    return images, labels


def hf_dataset(images, labels, classes):
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=list(classes))})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)
