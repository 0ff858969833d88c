"""Evaluation: staged forward with swapped tensors, per-task evaluation, curves."""
