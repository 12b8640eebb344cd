#!/usr/bin/env bash
# Issue 29: SWFP (our reading) on HalfCheetah-v5, the Gym tables' seeds, 300k, two runs at a time;
# worktree pinned at ee2daf1 (after the default-job measurement).
# (waited for the default-job measurement to end)
cd <worktree at ee2daf1>
export PYTHONPATH=<worktree at ee2daf1> OMP_NUM_THREADS=1
PY=.venv/bin/python
$PY benchmarks/compare_gym.py --task HalfCheetah-v5 --methods swfp --seeds 1 1000 2000 \
  --env-steps 300000 --jobs 2 --name compare_gym_halfcheetah-v5_swfp --runs outputs/swfp
