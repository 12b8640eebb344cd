#!/usr/bin/env bash
# Issue 29: SWFP (our reading) on Assembly-v3 and PickPlace-v3 at the shipped Meta-World defaults
# (rldt_metaworld.yaml, with the fast learner since issue 27), tuning seeds 1, 1000, 2000, 300k env
# steps. (lane_s2.sh ran Assembly seeds 1 and 1000 with the fp32 learner of before, 45 min a run.)
# Run from a worktree pinned at a commit: WT=<worktree> bash scripts/lanes/lane_s4.sh
set -euo pipefail
WT=${WT:?the worktree to run from}
cd "$WT"
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
for task in ${TASKS:-Assembly PickPlace}; do
  slug=$(echo "$task" | tr A-Z a-z)
  $PY benchmarks/compare_gym.py --task "MetaWorld/$task-v3" --methods swfp --seeds 1 1000 2000 \
    --env-steps 300000 --jobs 1 --name "compare_gym_metaworld-$slug-v3_swfp_fast" \
    --runs "${RUNS:-outputs/swfp}" --out "${OUT:-benchmarks/results}"
done
