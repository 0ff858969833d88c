"""Planning: blocks, block similarities, linkage, the greedy merge plan, size accounting, baselines."""
