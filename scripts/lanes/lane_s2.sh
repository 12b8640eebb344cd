#!/usr/bin/env bash
# Issue 29: SWFP (our reading) on the Meta-World tasks of the committed comparisons, seeds 1 1000 2000, 300k;
# worktree pinned at ee2daf1. Stopped after Assembly seeds 1 and 1000 (the session ended; seed 2000 and PickPlace not run).
cd <worktree at ee2daf1>
export PYTHONPATH=<worktree at ee2daf1> OMP_NUM_THREADS=1
PY=.venv/bin/python
for task in Assembly PickPlace; do
  slug=$(echo $task | tr A-Z a-z)
  $PY benchmarks/compare_gym.py --task MetaWorld/$task-v3 --methods swfp --seeds 1 1000 2000 \
    --env-steps 300000 --jobs 1 --name compare_gym_metaworld-$slug-v3_swfp --runs outputs/swfp
done
