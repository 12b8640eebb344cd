#!/usr/bin/env bash
# Issue 27: the transport balance tuned on the two hard tasks (StickPush-v3 here, Disassemble-v3 in
# lane_t2.sh) with the fast learner, tuning seeds 1, 1000, 2000, 300k env steps; the candidates first,
# the reference's weights last, then rl_coeff=6 on Assembly (seeds shared with lane_t2.sh).
# Worktree pinned at 745eec6.
WT=${WT:-/work/wt-t}
cd $WT
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
TASK=${TASK:-StickPush}
slug=metaworld-$(echo $TASK | tr A-Z a-z)-v3
FAST="--set learner_precision=bf16 --set schedule.target_action_reuse=4"
common="--methods rldt --env-steps 300000 --jobs 1 --runs /work/runs/tuning --out /work/runs/results $FAST"
$PY benchmarks/compare_gym.py --task MetaWorld/$TASK-v3 --seeds 1 1000 2000 $common \
  --set rldt.field_normalization=kernel_mass --name tune_${slug}_kernel_mass
$PY benchmarks/compare_gym.py --task MetaWorld/$TASK-v3 --seeds 1 1000 2000 $common \
  --set rldt.rl_coeff=6 --name tune_${slug}_rl_coef6
$PY benchmarks/compare_gym.py --task MetaWorld/$TASK-v3 --seeds 1 1000 2000 $common \
  --name tune_${slug}_fast_learner
$PY benchmarks/compare_gym.py --task MetaWorld/Assembly-v3 --seeds ${ASSEMBLY_SEEDS:-1 1000} $common \
  --set rldt.rl_coeff=6 --name tune_metaworld-assembly-v3_rl_coef6
