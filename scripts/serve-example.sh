#!/usr/bin/env bash
# Serve examples/counter (or the app given as $1) on embedded storage in ./.stateroom.
# Ctrl-C stops the runtime. Extra arguments after the config go to `stateroom serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
CONFIG="${1:-examples/counter/stateroom.toml}"
shift || true
exec .venv/bin/stateroom dev "$CONFIG" --data .stateroom "$@"
