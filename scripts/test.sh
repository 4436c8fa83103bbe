#!/usr/bin/env bash
# Run every check: lint (ruff), types (mypy), then the whole pytest suite.
# Installs what it needs itself (venv, test tools, Chromium for browser tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
scripts/install-browser.sh
.venv/bin/ruff check sdk supervisor worker tests bench examples
.venv/bin/ruff format --check sdk supervisor worker tests bench examples
.venv/bin/mypy
mkdir -p test-artifacts
.venv/bin/python -m pytest "$@"
