"""`python -m flexmerge_core ...` entry point."""
import sys

from flexmerge_core.cli import main

sys.exit(main())
