#!/usr/bin/env bash
# Issue 27: the Meta-World learner, decided on tuning seeds. The shipped config (fp32 learner,
# kernel-mass field) on Assembly-v3, seeds 1, 1000, 2000, 300k env steps, against the fast learner's
# committed 0.65 +- 0.03 (benchmarks/results/metaworld_tuning/tune_metaworld-assembly-v3_kernel_mass.md).
# Worktree pinned at 04919e7.  WT=/work/wt-h bash lane_h1.sh
WT=${WT:-/work/wt-h}
cd "$WT" || exit 1
export PYTHONPATH=$WT OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
$PY benchmarks/compare_gym.py --task MetaWorld/Assembly-v3 --methods rldt --seeds 1 1000 2000 \
  --env-steps 300000 --jobs 1 --runs /work/runs/tuning --out /work/runs/results \
  --name tune_metaworld-assembly-v3_kernel_mass_fp32
