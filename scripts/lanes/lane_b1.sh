#!/usr/bin/env bash
# Issue 27 item 1: the RBF kernel against a smaller step, on the two-peak bandit (tuning seeds 0, 1).
cd <worktree at ea0c86c>
export PYTHONPATH=<worktree at ea0c86c> OMP_NUM_THREADS=1
.venv/bin/python benchmarks/transport_tradeoff.py --seeds 0 1
