"""Fixtures shared by both suites (tests/edge runs without TensorFlow in its process, tests/training with it)."""

from pathlib import Path

import pytest

from tests.helpers import write_demo_folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two speakers (VCTK-style folders), 8 kHz, files named like FSDD; file index 0 and 1 are validation."""
    return write_demo_folder(tmp_path_factory.mktemp("tiny_data"), speakers=2, files=8, seconds=0.4, rate=8000)
