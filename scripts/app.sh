#!/usr/bin/env bash
# The README's run command: sets up .venv, then opens the dashboard on the embedded demo zoo
# (built offline on first use and cached under cache/).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
source scripts/ensure_venv.sh
# Idle OpenMP threads sleep instead of spinning: on a small shared machine spinning threads of
# several processes (app, tests, CLI subprocesses) slowed torch down many times over.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -m streamlit run app.py --server.headless true "$@"
