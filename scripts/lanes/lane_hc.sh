#!/usr/bin/env bash
# Issue 28 item 3: what lets RLDT move the HalfCheetah-v5 base past ~4200 (tuning seeds 1 and 1000,
# 300k env steps, the Gym defaults with HalfCheetah's frozen reference). Each variant loosens one
# thing that holds the policy near its base: the trust region's weight, its reference (re-anchored
# slowly), the transport's size (kernel-mass field, delta kernel) or the actor's step size.
# Run from a worktree pinned at a commit: WT=<worktree> bash scripts/lanes/lane_hc.sh
set -euo pipefail
WT=${WT:?the worktree to run from}
cd "$WT"
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
$PY benchmarks/ablation.py --task HalfCheetah-v5 --seeds 1 1000 --env-steps 300000 \
  --name ablation_halfcheetah-v5_past_4200 --runs "${RUNS:-outputs/ablation}" --out "${OUT:-benchmarks/results}" \
  --variant base= \
  --variant reference_coeff_0.05=rldt.reference_coeff=0.05 \
  --variant reanchor_every_256=schedule.reanchor_every=256 \
  --variant kernel_mass=rldt.field_normalization=kernel_mass \
  --variant delta=rldt.kernel=delta \
  --variant actor_lr_1e-4=optim.actor_lr=1e-4
