"""Time and peak RSS of `zoo import` for an M-task ViT-B-32 zoo in each source format, vs reading the bytes once.

Formats (random weights, written here in each format's real layout):
  open_clip_research   <Task>/finetuned.pt visual state dicts + a whole-CLIP pretrained state dict (--pretrained)
  task_vectors_pickle  torch.save(ImageEncoder) pickles (class `src.modeling.ImageEncoder`, not importable at
                       import time) + ClassificationHead pickles: read by the structural reader
  hf_clip/tf4-names    pretrained CLIPModel + CLIPVisionModel folders with `vision_model.` names, as hub
                       checkpoints saved by transformers 4 are: linked, not rewritten
  hf_clip/tf5-names    CLIPVisionModel folders as transformers 5 saves them (no prefix): rewritten
Each import runs in a fresh process (peak RSS = that process's ru_maxrss); "read bytes once" streams every
source file of the format through a 16 MiB buffer (the page cache is warm for both: files were just written).
Usage: python benchmarks/bench_import.py [--tasks 8] [--work DIR] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child would report this process's peak
_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
start = time.perf_counter()
{body}
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_rss_mb": peak / 1024}}))
"""

_READ = """
for path in {files!r}:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
"""

_IMPORT = """
from flexmerge_core.importers.dispatch import import_source
import_source({source!r}, {out!r}, **{options!r})
"""



def _run(code: str) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_research(src: Path, tasks: list[str]) -> dict:
    import open_clip
    import torch

    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save(clip.state_dict(), src / "pretrained.pt")
    for t in tasks:
        (src / t).mkdir(parents=True)
        torch.save({k: v + 1e-3 * torch.randn_like(v) for k, v in clip.visual.state_dict().items()},
                   src / t / "finetuned.pt")
    return {"model": "ViT-B-32", "pretrained": str(src / "pretrained.pt")}


def _write_pickles(src: Path, tasks: list[str]) -> dict:
    import open_clip
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from task_vectors_modeling import ClassificationHead, ImageEncoder, authors_modeling

    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    with authors_modeling():
        torch.save(ImageEncoder(clip), src / "pretrained.pt")
        for t in tasks:
            (src / t).mkdir(parents=True)
            with torch.no_grad():
                for p in clip.visual.parameters():
                    p.add_(1e-3 * torch.randn_like(p))
            torch.save(ImageEncoder(clip), src / t / "finetuned.pt")
            torch.save(ClassificationHead(True, torch.randn(10, 512)), src / f"head_{t}.pt")
    return {"model": "ViT-B-32", "pretrained": str(src / "pretrained.pt")}


def _clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                                   "num_hidden_layers": 12},
                      vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                     "num_hidden_layers": 12, "patch_size": 32, "image_size": 224},
                      projection_dim=512)


def _write_hf(src: Path, tasks: list[str], prefixed: bool) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPModel, CLIPVisionModel

    config = _clip_config()
    clip = CLIPModel(config)
    clip.save_pretrained(src / "pretrained")
    vision = clip.vision_model.state_dict()
    for t in tasks:
        state = {k: v + 1e-3 * torch.randn_like(v) for k, v in vision.items()}
        if prefixed:   # the hub's transformers-4 CLIPVisionModel files
            (src / t).mkdir(parents=True)
            save_file({f"vision_model.{k}": v.contiguous() for k, v in state.items()}, str(src / t / "model.safetensors"),
                      metadata={"format": "pt"})
            doc = {**config.vision_config.to_dict(), "architectures": ["CLIPVisionModel"],
                   "model_type": "clip_vision_model"}
            (src / t / "config.json").write_text(json.dumps(doc, default=str))
        else:
            model = CLIPVisionModel(config.vision_config)
            model.load_state_dict(state)
            model.save_pretrained(src / t)
    return {}


FORMATS = {
    "open_clip_research": _write_research,
    "task_vectors_pickle": _write_pickles,
    "hf_clip/tf4-names/linked": lambda src, tasks: _write_hf(src, tasks, prefixed=True),
    "hf_clip/tf5-names/rewritten": lambda src, tasks: _write_hf(src, tasks, prefixed=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-import-"))
    tasks = [f"task{i}" for i in range(args.tasks)]
    print(f"{'format':32s} {'source GB':>9s} {'read s':>7s} {'read MB':>8s} {'import s':>8s} {'import MB':>9s} "
          f"{'zoo new GB':>10s}")
    for name in args.formats.split(","):
        src, out = work / "src", work / "zoo"
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        src.mkdir(parents=True)
        options = FORMATS[name](src, tasks)
        files = sorted(str(p) for p in src.rglob("*") if p.is_file())
        size = sum(os.path.getsize(f) for f in files) / 1e9
        read = _run(_CHILD.format(root=str(ROOT), body=_READ.format(files=files)))
        model = options.pop("model", None)
        body = _IMPORT.format(source=str(src), out=str(out), options={"model": model, **options})
        imported = _run(_CHILD.format(root=str(ROOT), body=body))
        inodes = {os.stat(f).st_ino for f in files}
        new = sum(os.path.getsize(p) for p in out.rglob("*") if p.is_file() and os.stat(p).st_ino not in inodes) / 1e9
        print(f"{name:32s} {size:9.2f} {read['seconds']:7.2f} {read['peak_rss_mb']:8.0f} "
              f"{imported['seconds']:8.2f} {imported['peak_rss_mb']:9.0f} {new:10.2f}", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
