#!/usr/bin/env bash
# Creates or reuses .venv at the repository root and (re)installs requirements.txt only when it
# changed since the last successful install (its hash is stored inside .venv), then installs this
# repository itself in editable mode (the `flexmerge` command) when pyproject.toml or the
# repository's location changed. Sourced by the README's two commands so that a fresh machine
# needs nothing else.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$repo_root/requirements.txt" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv" >&2
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (first time: several GB, a few minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -r "$repo_root/requirements.txt" >&2
  echo "$want" > "$stamp"
fi
project_stamp="$venv/.project.sha256"
project_want="$( (sha256sum "$repo_root/pyproject.toml"; echo "$repo_root") | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/flexmerge" ] || [ "$(cat "$project_stamp" 2>/dev/null || true)" != "$project_want" ]; then
  echo "[setup] installing this repository into .venv in editable mode (the flexmerge command)" >&2
  if "$venv/bin/python" -m pip install --quiet --no-deps -e "$repo_root" >&2; then
    echo "$project_want" > "$project_stamp"
  else  # a convenience only: everything also runs as `python -m flexmerge_core` from the repository
    echo "[setup] could not install the flexmerge command; use .venv/bin/python -m flexmerge_core" >&2
  fi
fi

# Fonts for the demo zoo's rendered tasks (Debian's DejaVu). Installed when missing and possible;
# the demo builder falls back visibly to PIL's built-in font otherwise.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSerifCondensed.ttf ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing fonts-dejavu-core fonts-dejavu-extra (apt)" >&2
  (apt-get install -y -qq fonts-dejavu-core fonts-dejavu-extra >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fonts-dejavu-core fonts-dejavu-extra >/dev/null 2>&1)) || \
   echo "[setup] could not install fonts-dejavu-core fonts-dejavu-extra; the demo zoo will use fallback fonts" >&2
fi
