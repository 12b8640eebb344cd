from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    """Imports a script of the repository (an example or a benchmark) as a module, by file path.

    The scripts' neighbours (``examples/rldt_utils.py`` imports ``utils``) are importable as
    when the script runs, through ``pythonpath`` in ``pytest.ini``.
    """
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# Meta-World's scripted experts come from `pip install --no-deps metaworld==3.1.1` (its own pins
# clash with ours), which scripts/setup.sh runs and `pip install -e ".[test]"` cannot: without
# them the tests marked metaworld_experts are skipped, except in a venv made by scripts/setup.sh
# (the README's commands, CI), which promises them, so that there they fail instead.
METAWORLD_EXPERTS = _importable("metaworld.policies")
MADE_BY_SETUP_SCRIPT = (Path(sys.prefix) / ".rldt-setup").exists()


def pytest_collection_modifyitems(config, items):
    if METAWORLD_EXPERTS or MADE_BY_SETUP_SCRIPT:
        return
    skip = pytest.mark.skip(reason="needs Meta-World's scripted experts: "
                                   "pip install --no-deps metaworld==3.1.1 (scripts/setup.sh installs them)")
    for item in items:
        if item.get_closest_marker("metaworld_experts"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
