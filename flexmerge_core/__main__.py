"""`python -m flexmerge_core ...` entry point (the same as the installed `flexmerge` command)."""
import sys

from flexmerge_core.cli import run

sys.exit(run())
