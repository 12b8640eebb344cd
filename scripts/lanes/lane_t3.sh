#!/usr/bin/env bash
# Issue 27: re-planned halfway through lane_t1.sh / lane_t2.sh so that the choice of the shipped
# setting has its data within the session: after each lane's rl_coeff=6 runs, lane 1 runs rl_coeff=6
# on Assembly-v3 (seeds 1, 1000, 2000), lane 2 the reference's weights on StickPush-v3; the
# reference's weights on Disassemble-v3 are left for the next session. Worktree pinned at 745eec6.
# LANE=1|2 WAIT_PID=<the running compare_gym> bash lane_t3.sh
WT=${WT:-/work/wt-t}
cd "$WT" || exit 1
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
FAST="--set learner_precision=bf16 --set schedule.target_action_reuse=4"
common="--methods rldt --seeds 1 1000 2000 --env-steps 300000 --jobs 1 --runs /work/runs/tuning --out /work/runs/results $FAST"
if [ "$LANE" = 1 ]; then
  $PY benchmarks/compare_gym.py --task MetaWorld/Assembly-v3 $common --set rldt.rl_coeff=6 \
    --name tune_metaworld-assembly-v3_rl_coef6
else
  $PY benchmarks/compare_gym.py --task MetaWorld/StickPush-v3 $common --name tune_metaworld-stickpush-v3_fast_learner
fi
