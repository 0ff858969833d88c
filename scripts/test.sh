#!/usr/bin/env bash
# The README's test command: sets up .venv and system packages, then runs the whole test suite.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
source scripts/ensure_venv.sh
# Idle OpenMP threads sleep instead of spinning: on a small shared machine spinning threads of
# several processes (app, tests, CLI subprocesses) slowed torch down many times over.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ -f scripts/ensure_browser.sh ]; then source scripts/ensure_browser.sh; fi
exec .venv/bin/python -m pytest "$@"
