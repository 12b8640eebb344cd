#!/usr/bin/env bash
# Issue 29, re-planned so that SWFP's PickPlace-v3 rows finish within the session: lane A takes the
# core of lane_h1.sh after its seed 1000 (seed 2000 of the fp32 learner left for the next session)
# and runs PickPlace seeds 1 and 2000; lane B runs seed 1000 after lane_s5.sh's Assembly runs. The
# settings are lane_s5.sh's (the fast learner). Worktree pinned at 04919e7.
# LANE=A|B WT=/work/wt-h bash lane_s6.sh
WT=${WT:-/work/wt-h}
cd "$WT" || exit 1
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
if [ "$LANE" = A ]; then
  while [ ! -f /work/runs/tuning/tune_metaworld-assembly-v3_kernel_mass_fp32/rldt-seed1000/summary.json ]; do sleep 5; done
  pkill -f lane_h1.sh; pkill -f kernel_mass_fp32; sleep 3
  seeds="1 2000"
else
  while pgrep -f "Assembly-v3 --methods swfp" > /dev/null; do sleep 10; done
  seeds="1000"
fi
$PY benchmarks/compare_gym.py --task MetaWorld/PickPlace-v3 --methods swfp --seeds $seeds \
  --env-steps 300000 --jobs 1 --set learner_precision=bf16 --set schedule.target_action_reuse=4 \
  --name compare_gym_metaworld-pickplace-v3_swfp_fast --runs /work/runs/swfp --out /work/runs/results_$LANE
