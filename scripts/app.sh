#!/usr/bin/env bash
# The README's run command: sets up .venv, then opens the dashboard on the embedded demo zoo
# (built offline on first use and cached under cache/).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
source scripts/ensure_venv.sh
exec .venv/bin/python -m streamlit run app.py --server.headless true "$@"
