"""Rejection-sampling fine-tuning: the filter by hand, and the SFT update on what it keeps."""

import pytest
import torch

from agentenv.models import tiny_random_model
from agentenv.trainers.algorithms.rft import RFTConfig, acceptance_stats, accepted, rft_update
from agentenv.trajectory import Trajectory

# Two questions × four samples; sample 2 of question 0 repeats sample 0 token for token.
REWARDS = [1.0, 0.1, 1.0, 0.0, 0.5, 0.9, 0.9, 0.0]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1]
TOKENS = [[1, 2], [1, 3], [1, 2], [1, 4], [5, 6], [5, 7], [5, 8], [5, 9]]


def test_threshold_keeps_every_sample_at_or_above_the_reward():
    config = RFTConfig(keep="threshold", min_reward=0.9, distinct=False)
    assert accepted(REWARDS, GROUPS, TOKENS, config) == [True, False, True, False, False, True, True, False]


def test_distinct_keeps_the_first_of_identical_trajectories_of_a_question():
    config = RFTConfig(keep="threshold", min_reward=0.9, distinct=True)
    assert accepted(REWARDS, GROUPS, TOKENS, config) == [True, False, False, False, False, True, True, False]
    # The same tokens under another question are another trajectory.
    assert accepted([1.0, 1.0], [0, 1], [[1, 2], [1, 2]], config) == [True, True]


def test_best_keeps_one_per_question_the_first_on_ties_if_it_passes():
    best = RFTConfig(keep="best", min_reward=0.0, distinct=False)
    assert accepted(REWARDS, GROUPS, TOKENS, best) == [True, False, False, False, False, True, False, False]
    # Question 1's best (0.9) is below τ = 0.95: nothing of it is kept.
    strict = RFTConfig(keep="best", min_reward=0.95)
    assert accepted(REWARDS, GROUPS, TOKENS, strict) == [True, False, False, False, False, False, False, False]


def test_acceptance_rate_overall_per_kind_and_questions_covered():
    keep = [True, False, False, False, False, True, True, False]
    kinds = ["city_population"] * 4 + ["distance"] * 4
    stats = acceptance_stats(kinds, GROUPS, keep)
    assert stats["rft/acceptance_rate"] == 3 / 8
    assert stats["rft/accepted"] == 3
    assert stats["rft/acceptance_rate/city_population"] == 1 / 4
    assert stats["rft/acceptance_rate/distance"] == 2 / 4
    assert stats["rft/questions_covered"] == 1.0
    assert acceptance_stats(kinds, GROUPS, [False] * 8)["rft/questions_covered"] == 0.0


def test_bad_keep_rule_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"rft\.keep must be one of \['threshold', 'best'\]"):
        RFTConfig(keep="top").validate()


# --- the update ------------------------------------------------------------------------------------


def _trajectory(prompt, policy, tool, generator, vocab):
    trajectory = Trajectory()
    for source, count in (("prompt", prompt), ("policy", policy), ("tool", tool)):
        if count:
            trajectory.append(source, torch.randint(3, vocab, (count,), generator=generator).tolist())
    return trajectory


def _gradient(tokenizer, trajectories):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the gradient, move nothing
    config = RFTConfig(minibatch_size=len(trajectories), micro_batch_size=2)
    original = optimizer.step
    grads = {}

    def capture():
        grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        original()

    optimizer.step = capture
    metrics = rft_update(model, optimizer, trajectories, config, tokenizer.pad_token_id, max_grad_norm=None)
    return grads, metrics


def test_tool_tokens_get_no_loss(tokenizer):
    """Tool output that ends the episode changes no context of a policy token: replacing its ids
    must leave the gradient exactly as it was, which holds only if those tokens carry no loss."""
    vocab = len(tokenizer)
    generator = torch.Generator().manual_seed(0)
    trajectories = [_trajectory(5, 4, 3, generator, vocab), _trajectory(6, 3, 5, generator, vocab)]
    other = []
    for trajectory in trajectories:
        changed = Trajectory(list(trajectory.segments[:-1]))
        changed.append("tool", torch.randint(3, vocab, (len(trajectory.segments[-1].token_ids),), generator=generator))
        other.append(changed)
    grads, metrics = _gradient(tokenizer, trajectories)
    other_grads, _ = _gradient(tokenizer, other)
    assert metrics["update/policy_tokens"] == 7
    for name, grad in grads.items():
        assert torch.equal(grad, other_grads[name]), name
    assert any(grad.abs().sum() > 0 for grad in grads.values())


def test_epochs_and_minibatches_make_the_optimizer_steps(tokenizer):
    vocab = len(tokenizer)
    generator = torch.Generator().manual_seed(1)
    trajectories = [_trajectory(4, 3, 2, generator, vocab) for _ in range(5)]
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = RFTConfig(epochs=2, minibatch_size=2, micro_batch_size=1)
    metrics = rft_update(model, optimizer, trajectories, config, tokenizer.pad_token_id,
                         generator=torch.Generator().manual_seed(0))
    assert metrics["update/optimizer_steps"] == 6  # 2 epochs × ⌈5 / 2⌉
    assert metrics["update/sequences"] == 5
    assert metrics["update/policy_tokens"] == 15  # one epoch's worth


def test_a_round_with_nothing_accepted_makes_no_update(tokenizer):
    model = tiny_random_model(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    metrics = rft_update(model, optimizer, [], RFTConfig(), tokenizer.pad_token_id)
    assert metrics["update/skipped"] == 1.0
    assert not optimizer.state  # no optimizer step was taken
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
