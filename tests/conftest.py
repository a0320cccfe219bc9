"""Pytest configuration: tests import the helpers in this folder by module name."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
