#!/usr/bin/env bash
# Create ./.venv (if missing) and install stateroom into it, editable.
# Usage: scripts/bootstrap.sh [extra]   e.g. `scripts/bootstrap.sh test` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extra="${1:-}"
stamp=".venv/.installed-${extra:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    if [ -n "$extra" ]; then
        .venv/bin/python -m pip install --quiet -e ".[$extra]"
    else
        .venv/bin/python -m pip install --quiet -e .
    fi
    touch "$stamp"
fi
