#!/usr/bin/env bash
# Issue 27 item 1: balance candidates with the fast learner on the tuning seeds, from the worktree
# pinned at ea0c86c (after the reference-weight Assembly runs of lane_a1 end).
# (waited for lane_a1.sh to end)
cd <worktree at ea0c86c>
export PYTHONPATH=<worktree at ea0c86c> OMP_NUM_THREADS=1
PY=.venv/bin/python
FAST="--set learner_precision=bf16 --set schedule.target_action_reuse=4"
for task in Assembly PickPlace; do
  slug=$(echo $task | tr A-Z a-z)
  $PY benchmarks/compare_gym.py --task MetaWorld/$task-v3 --methods rldt --seeds 1 1000 2000 \
    --env-steps 300000 --jobs 1 $FAST --set rldt.field_normalization=kernel_mass \
    --name tune_metaworld-$slug-v3_kernel_mass --runs outputs/tuning
done
$PY benchmarks/compare_gym.py --task MetaWorld/PickPlace-v3 --methods rldt --seeds 1 1000 2000 \
  --env-steps 300000 --jobs 1 $FAST --set rldt.rl_coef=6 \
  --name tune_metaworld-pickplace-v3_rl_coef6 --runs outputs/tuning
