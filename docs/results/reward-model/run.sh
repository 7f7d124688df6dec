#!/bin/bash
# Issue 14 on the real model: a Bradley-Terry reward model on SmolLM2-135M from the geo SFT agent's own
# rollouts (pairs ordered by the verifier), then best-of-N on 100 dev questions selected by it, by
# majority vote and by the verifier (the oracle bound). `make reward-model` trains it once; `make goodhart`
# uses the same one.
cd "$(dirname "$0")/../../.." || exit 1
B=.venv/bin/agentenv
make reward-model || exit 1
$B eval --model runs/experiment-geo/sft-agent --mode agent --questions geo:dev --limit 100 \
  --max-turns 4 --max-turn-tokens 64 --max-total-tokens 1536 --passages 3 --batch-size 32 \
  --best-of 8 --temperature 1.0 --select verifier majority reward-model --reward-model runs/rm-geo-sft \
  --out runs/rm-geo-sft/best-of-8-dev100
echo RM-DONE
