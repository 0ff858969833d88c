"""Architecture adapters: everything model-family specific (layout, build, staged forward, inputs)."""
