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


def pytest_collection_modifyitems(config, items):
    """Tests that use a module- or class-scoped fixture join their module's xdist group, so
    that the fixture (a tuning session, a trained student, a booted device) is built by one
    worker instead of each (``--dist loadgroup``); the other tests are spread one by one."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        scopes = {fixture.scope for chain in (defs.name2fixturedefs.values() if defs else ())
                  for fixture in chain}
        if scopes & {"module", "class"}:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
