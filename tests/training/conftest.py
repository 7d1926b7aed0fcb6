"""Fixtures of the training tests."""

from pathlib import Path

import pytest

from tests.colour_folder import write_colour_folder


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    """Three classes of 20 colour PNGs each (tests/colour_folder.py)."""
    return write_colour_folder(tmp_path / "shapes")
