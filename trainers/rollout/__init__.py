"""Sampling episodes: rollout engines (token ids in, token ids and logprobs out), the batched
multi-turn rollout over a list of environments, and Ray workers that each run both."""
