#!/usr/bin/env bash
# Issue 29: SWFP (our reading) on Assembly-v3 and PickPlace-v3, seeds 1, 1000, 2000, 300k env steps,
# with the Meta-World config and the fast learner (bf16, target samples shared by 4 critic steps: the
# Gym default; named in the table), ~15 min a run against ~45 with fp32 (lane_s2.sh).
# Worktree pinned at 04919e7.  WT=/work/wt-h [WAIT_FILE=<a summary.json to wait for>] bash lane_s5.sh
WT=${WT:-/work/wt-h}
cd "$WT" || exit 1
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
if [ -n "${WAIT_FILE:-}" ]; then while [ ! -f "$WAIT_FILE" ]; do sleep 5; done; fi
if [ -n "${KILL_PATTERN:-}" ]; then pkill -f "$KILL_PATTERN"; sleep 3; fi
for task in ${TASKS:-Assembly PickPlace}; do
  slug=$(echo "$task" | tr A-Z a-z)
  $PY benchmarks/compare_gym.py --task "MetaWorld/$task-v3" --methods swfp --seeds 1 1000 2000 \
    --env-steps 300000 --jobs 1 --set learner_precision=bf16 --set schedule.target_action_reuse=4 \
    --name "compare_gym_metaworld-$slug-v3_swfp_fast" --runs /work/runs/swfp --out /work/runs/results
done
