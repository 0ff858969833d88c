"""Small zoos written to temp folders for the similarity and plan tests, and a textbook cosine."""
import numpy as np
import torch

from flexmerge_core.zoo import open_zoo, write_zoo

TINY_VIT = {"image_size": 8, "patch_size": 4, "width": 16, "layers": 2, "heads": 2, "mlp_ratio": 2,
            "output_dim": 8}
# ViT-B-32's layout (12 layers, patch 32 on 224 px, MLP ratio 4) at a reduced width for test speed.
NARROW_VIT_B_32 = {"image_size": 224, "patch_size": 32, "width": 64, "layers": 12, "heads": 2, "mlp_ratio": 4,
                   "output_dim": 64}


def textbook_cosine(rows):
    """rows: float64 [M, d]; cos(a, b) = a.b / (|a||b| + 1e-8)."""
    out = np.zeros((len(rows), len(rows)))
    for i, a in enumerate(rows):
        for j, b in enumerate(rows):
            out[i, j] = float(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)
    return out


def random_zoo(folder, config=TINY_VIT, num_tasks=4, seed=0):
    """A zoo whose task vectors share a common direction plus task noise; task1 learned nothing.
    Returns (zoo, {task: state dict}, pretrained state dict)."""
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    pretrained = {k: v.clone() for k, v in VisionTransformer(**config).state_dict().items()}
    shared = {k: torch.randn_like(v) for k, v in pretrained.items()}
    states = {f"task{t}": {k: v + 0.01 * (shared[k] + torch.randn_like(v)) for k, v in pretrained.items()}
              for t in range(num_tasks)}
    states["task1"] = {k: v.clone() for k, v in pretrained.items()}
    path = write_zoo(folder, {"kind": "open_clip_vit", "config": config}, pretrained,
                     [{"name": name, "state_dict": sd} for name, sd in states.items()])
    return open_zoo(path), states, pretrained


def block_rows(states, pretrained, params):
    """float64 [M, block numel]: the tasks' block vectors computed from the in-memory state dicts."""
    return torch.cat([torch.stack([sd[p] - pretrained[p] for sd in states.values()]).reshape(len(states), -1)
                      for p in params], dim=1).double().numpy()
