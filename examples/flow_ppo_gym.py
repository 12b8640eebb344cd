"""Deprecated name of ``examples/ppo_gym.py`` (ReinFlow, FPO++ and DPPO: it runs a DDPM policy too).

Runs ``ppo_gym.py`` with the same arguments; its configs are ``ppo_gym`` and ``ppo_metaworld``.
"""
from __future__ import annotations

import logging
import runpy
from pathlib import Path

if __name__ == "__main__":
    logging.getLogger("flow_ppo_gym").warning(
        "examples/flow_ppo_gym.py is deprecated: run examples/ppo_gym.py (same arguments; "
        "--config-name ppo_metaworld for flow_ppo_metaworld)")
    runpy.run_path(str(Path(__file__).with_name("ppo_gym.py")), run_name="__main__")
