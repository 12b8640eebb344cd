#!/usr/bin/env bash
# Issue 29: SWFP (our reading) on Hopper and Walker2d (HalfCheetah: lane_s3.sh), the Gym tables' seeds, 300k; worktree pinned at ee2daf1.
cd <worktree at ee2daf1>
export PYTHONPATH=<worktree at ee2daf1> OMP_NUM_THREADS=1
PY=.venv/bin/python
for task in Hopper Walker2d; do
  slug=$(echo $task | tr A-Z a-z)
  $PY benchmarks/compare_gym.py --task $task-v5 --methods swfp --seeds 1 1000 2000 \
    --env-steps 300000 --jobs 1 --name compare_gym_$slug-v5_swfp --runs outputs/swfp
done
