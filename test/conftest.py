from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """Imports a script of the repository (an example or a benchmark) as a module, by file path."""
    path = ROOT / relative_path
    # as when the script runs: its own directory is importable (examples/rldt_utils.py imports utils)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
