#!/bin/bash
# Issue 11 lever 3 on dev: Dr. GRPO (sum over tokens / L_max, no std scaling) at the B 16 x G 4, lr 5e-5 setting.
cd /work/main
export AGENTENV_ROOT=/work/wt-probe PYTHONPATH=/work/shim
exec /work/main/.venv/bin/agentenv train --config configs/cpu-smollm2.yaml \
  --set model.init_from=runs/experiment-geo/sft-agent --set sft.steps=0 --set max_steps=40 \
  --set grpo.questions_per_step=16 --set grpo.group_size=4 --set optim.lr=5.0e-5 --set optim.warmup_steps=5 --set grpo.loss_agg=seq-mean-token-sum-norm --set grpo.scale_advantages_by_std=false \
  --set eval.every=20 --set eval.questions=geo:dev --set eval.limit=200 --set checkpoint.every=10 \
  --out runs/b16-probe/grpo-b16-g4-lr5e-5-drgrpo
