"""Deployments: merged groups (memo + disk cache), deployments at a size, export."""
