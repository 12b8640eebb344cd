#!/usr/bin/env bash
# Issue 29: SWFP Assembly-v3 seed 2000 again, after the fix of d09ee7f (the run of lane_s5.sh crashed
# at its first critic step: a critic window past the end of a round batch shortened by episode ends).
# Seeds 1 and 1000 (worktree at 04919e7) are reused; the table names both commits.
# Worktree pinned at d09ee7f.  WAIT_PID=<lane B's compare_gym> WT=/work/wt-fix bash lane_s7.sh
WT=${WT:-/work/wt-fix}
cd "$WT" || exit 1
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
rm -rf /work/runs/swfp/compare_gym_metaworld-assembly-v3_swfp_fast/swfp-seed2000*
$PY benchmarks/compare_gym.py --task MetaWorld/Assembly-v3 --methods swfp --seeds 1 1000 2000 \
  --env-steps 300000 --jobs 1 --set learner_precision=bf16 --set schedule.target_action_reuse=4 \
  --name compare_gym_metaworld-assembly-v3_swfp_fast --runs /work/runs/swfp --out /work/runs/results
