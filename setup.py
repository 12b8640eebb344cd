"""Installs torchrl-rldt: RL fine-tuning of flow-matching policies on TorchRL."""
from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
EXAMPLES_REQUIRE = ["hydra-core>=1.3", "tqdm", "matplotlib"]
DEMOS_REQUIRE = ["scipy"]
DISTRIBUTED_REQUIRE = ["ray>=2.40"]


def _version() -> str:
    for line in (ROOT / "torchrl_rldt" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("torchrl_rldt/__init__.py defines no __version__")


setup(
    name="torchrl-rldt",
    version=_version(),
    description=(
        "RLDT (RL for flow-matching policies with density transport) and "
        "baselines as TorchRL building blocks"
    ),
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["torchrl_rldt", "torchrl_rldt.*"]),
    # the library: losses, modules, envs, data, checkpoints and the run harness
    install_requires=[
        "torch>=2.11",
        "torchrl>=0.14.1,<0.15",
        "tensordict>=0.14.3,<0.15",
        "gymnasium[mujoco]>=1.0",
        "envpool>=1.2.5",
    ],
    extras_require={
        # what the example scripts, benchmarks and the harness's summaries add on top
        "examples": EXAMPLES_REQUIRE,
        # Meta-World's scripted experts (metaworld.policies) for recording demonstrations: they
        # need scipy; metaworld itself is installed with `pip install --no-deps metaworld==3.1.1`
        # (scripts/setup.sh), because it pins mujoco==3.3.0 for environments we do not use
        "demos": DEMOS_REQUIRE,
        # collection on a Ray cluster (collector.kind=ray, TorchRL's RayCollector)
        "distributed": DISTRIBUTED_REQUIRE,
        # the test suite runs the examples end to end, a Ray run among them
        "test": ["pytest>=7", "pytest-timeout", *EXAMPLES_REQUIRE, *DEMOS_REQUIRE, *DISTRIBUTED_REQUIRE],
    },
)
