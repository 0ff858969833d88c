"""A tiny evaluable zoo (heads + held-out data) for the deployment, evaluation, export and curve tests.

Labels are the fine-tuned model's own predictions with every fifth one replaced by a random class,
so fine-tuned accuracy is high but below 1 and merging visibly changes predictions.
"""
import torch

from flexmerge_core.zoo import open_zoo, write_zoo

TINY_VIT = {"image_size": 8, "patch_size": 4, "width": 16, "layers": 2, "heads": 2, "mlp_ratio": 2,
            "output_dim": 8}
CLASSES = 3
HELDOUT = 40


def reference_logits(config, state, head, images, normalized=False):
    """Textbook forward: a fresh open_clip module with `state` loaded, then the linear head."""
    from open_clip.transformer import VisionTransformer

    model = VisionTransformer(**config).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        features = model(images)
    if normalized:
        features = features / features.norm(dim=-1, keepdim=True)
    return features @ head["weight"].t() + head["bias"]


def evaluable_zoo(folder, num_tasks=4, seed=0, head_input="raw", unmerged=None, config=TINY_VIT, heldout=HELDOUT):
    """Returns (zoo, {task: state dict}, pretrained state dict, {task: head})."""
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    pretrained = {k: v.clone() for k, v in VisionTransformer(**config).state_dict().items()}
    shared = {k: torch.randn_like(v) for k, v in pretrained.items()}
    tasks, states, heads = [], {}, {}
    size = config["image_size"]
    for t in range(num_tasks):
        name = f"task{t}"
        state = {k: v + 0.05 * shared[k] + 0.2 * v.std().clamp_min(0.02) * torch.randn_like(v)
                 for k, v in pretrained.items()}
        head = {"weight": torch.randn(CLASSES, config["output_dim"]), "bias": 0.1 * torch.randn(CLASSES)}
        images = torch.randn(heldout, 3, size, size)
        labels = reference_logits(config, state, head, images, head_input == "normalized").argmax(-1)
        labels[::5] = torch.randint(0, CLASSES, (len(labels[::5]),))
        states[name], heads[name] = state, head
        tasks.append({"name": name, "state_dict": state, "head": head, "data": (images, labels),
                      "classes": [str(c) for c in range(CLASSES)]})
    path = write_zoo(folder, {"kind": "open_clip_vit", "config": config}, pretrained, tasks,
                     head_input=head_input, unmerged=unmerged)
    return open_zoo(path), states, pretrained, heads


def plan_for(zoo, algorithm_name="ta", granularity="component", **hyperparameters):
    """(spec, algorithm, plan) for a zoo."""
    from flexmerge_core.algorithms import get_algorithm
    from flexmerge_core.planning.blocks import build_blocks
    from flexmerge_core.planning.plan import build_plan

    spec = build_blocks(zoo.param_names, zoo.param_shapes, granularity=granularity)
    algorithm = get_algorithm(algorithm_name, **hyperparameters)
    return spec, algorithm, build_plan(zoo, spec, algorithm)
