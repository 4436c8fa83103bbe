"""Shared test setup: the `stateroom_runtime` fixture comes from the stateroom.testing plugin."""

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
