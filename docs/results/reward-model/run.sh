#!/bin/bash
# Issue 14 on the real model: a Bradley-Terry reward model on SmolLM2-135M from the geo SFT agent's own
# rollouts (pairs ordered by the verifier), then best-of-N on 100 dev questions selected by it, by
# majority vote and by the verifier (the oracle bound). The same reward model is the one
# `make goodhart` trains and uses.
cd /work/main
B=${AGENTENV_BIN:-.venv/bin/agentenv}
test -f runs/rm-geo-sft/model/reward_model.json || $B rm train --config configs/rm/rm-geo.yaml \
  --set data.rollouts.policy=runs/experiment-geo/sft-agent --set data.rollouts.env.kwargs.max_turn_tokens=64 \
  --set train.steps=40 --out runs/rm-geo-sft || exit 1
$B eval --model runs/experiment-geo/sft-agent --mode agent --questions geo:dev --limit 100 \
  --max-turns 4 --max-turn-tokens 64 --max-total-tokens 1536 --passages 3 --batch-size 32 \
  --best-of 8 --temperature 1.0 --select verifier majority reward-model --reward-model runs/rm-geo-sft \
  --out runs/rm-geo-sft/best-of-8-dev100
echo RM-DONE
