#!/usr/bin/env bash
# Issue 27 item 2: the fast learner (bf16, target samples reused by 4) on Meta-World at the reference
# weights (the shipped rldt_metaworld config otherwise), tuning seeds; from the worktree pinned at 19c5b19.
cd <worktree at 19c5b19>
export PYTHONPATH=<worktree at 19c5b19> OMP_NUM_THREADS=1
PY=.venv/bin/python
for task in Assembly PickPlace; do
  slug=$(echo $task | tr A-Z a-z)
  $PY benchmarks/compare_gym.py --task MetaWorld/$task-v3 --methods rldt --seeds 1 1000 2000 \
    --env-steps 300000 --jobs 1 --set learner_precision=bf16 --set schedule.target_action_reuse=4 \
    --name tune_metaworld-$slug-v3_fast_learner --runs outputs/tuning
done
