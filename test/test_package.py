# This source code is licensed under the MIT license found in the
# LICENSE file in the root directory of this source tree.
"""The package's shape: the library imports none of the examples' dependencies."""
from __future__ import annotations

import subprocess
import sys


def test_library_imports_no_example_dependency():
    # hydra/omegaconf, matplotlib (and tqdm, which torchrl itself imports) serve the examples:
    # `pip install torchrl-rldt` without the [examples] extra must be enough for the library.
    code = (
        "import sys\n"
        "import torchrl_rldt.checkpoint, torchrl_rldt.data, torchrl_rldt.envs, torchrl_rldt.trainers\n"
        "import torchrl_rldt.modules, torchrl_rldt.objectives\n"
        "print(sorted(m for m in ('hydra', 'omegaconf', 'matplotlib') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_old_harness_module_warns_and_reexports():
    import importlib
    import sys as _sys
    import warnings

    from torchrl_rldt.envs import evaluate_policy
    from torchrl_rldt.trainers import TrainingRun

    _sys.modules.pop("torchrl_rldt.harness", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        harness = importlib.import_module("torchrl_rldt.harness")
    assert any(issubclass(w.category, DeprecationWarning) and "torchrl_rldt.trainers" in str(w.message)
               for w in caught)
    assert harness.TrainingRun is TrainingRun and harness.evaluate_policy is evaluate_policy
