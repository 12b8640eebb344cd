#!/usr/bin/env bash
# Issue 27: lane_t1.sh on Disassemble-v3, then rl_coeff=6 on Assembly seed 2000. Worktree pinned at 745eec6.
TASK=Disassemble ASSEMBLY_SEEDS=2000 exec bash "$(dirname "$0")/lane_t1.sh"
