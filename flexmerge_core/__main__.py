"""`python -m flexmerge_core ...` entry point."""
import os
import sys

# Idle OpenMP threads sleep instead of spinning (set before torch is imported): on small shared
# machines spinning threads of concurrent processes slowed torch down many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from flexmerge_core.cli import main  # noqa: E402  (after the environment is set)

sys.exit(main())
