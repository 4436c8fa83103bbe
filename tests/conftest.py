"""Shared test setup: the `stateroom_runtime` fixture comes from the stateroom.testing plugin."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def apps() -> Path:
    return APPS


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


def run_cli(rt, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m stateroom ARGS --url URL --token TOKEN` against a test runtime."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("STATEROOM_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "stateroom", *args, "--url", rt.url, "--token", rt.token],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )
