"""Pytest configuration and the fixtures tests share.

Tests import the helpers in this folder (``helpers``, ``models``, ``qdq``) by module name.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def scoped_passes():
    """Passes registered inside the test are forgotten after it."""
    from relaycomp.registry import PASSES

    with PASSES.scoped():
        yield PASSES


@pytest.fixture
def scoped_features():
    """Features registered inside the test are forgotten after it."""
    from relaycomp.compiler.features import FEATURES

    with FEATURES.scoped():
        yield FEATURES
