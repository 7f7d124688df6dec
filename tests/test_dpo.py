"""DPO on trajectory pairs: log-ratios over policy tokens only, by hand; pairs; the update."""

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from agentenv.models import tiny_random_model
from agentenv.trainers.algorithms.dpo import (
    DPOConfig,
    append_pairs,
    dpo_loss,
    dpo_update,
    pairs_from_rollout,
    read_pairs,
    sequence_logprobs,
)
from agentenv.trainers.algorithms.reward_model import PreferencePair, read_preference_pairs
from agentenv.trainers.loop.config import ConfigError, load_config
from agentenv.trajectory import Trajectory

# --- the loss by hand ------------------------------------------------------------------------------


def _toy():
    """Two pairs: rows 0, 1 chosen, rows 2, 3 rejected; 0 in the mask are tool output or padding."""
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.6, 0.3], [0.4, 0.9, 0.5, 0.25],
                                   [0.3, 0.7, 0.2, 0.1], [0.6, 0.5, 0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.4, 0.3, 0.1, 0.3], [0.5, 0.5, 0.6, 0.5],
                                  [0.4, 0.1, 0.2, 0.3], [0.5, 0.5, 0.9, 0.4]]))
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    return logp, ref, mask


def _hand_log_ratios(logp, ref, mask):
    """Σ_t m_t (log π − log π_ref) per row, term by term."""
    return [sum((logp[i, t].item() - ref[i, t].item()) for t in range(4) if mask[i, t] == 1) for i in range(4)]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_loss_and_gradient_match_hand_computation(loss):
    logp, ref, mask = _toy()
    beta = 0.5
    leaf = logp.clone().requires_grad_(True)
    sequence = sequence_logprobs(leaf, mask)
    ref_sequence = sequence_logprobs(ref, mask)
    terms = dpo_loss(sequence[:2], sequence[2:], ref_sequence[:2], ref_sequence[2:], beta, loss)
    terms.loss.mean().backward()

    ratios = _hand_log_ratios(logp, ref, mask)
    h = [ratios[0] - ratios[2], ratios[1] - ratios[3]]
    if loss == "sigmoid":
        hand = [-math.log(1 / (1 + math.exp(-beta * x))) for x in h]
        d_h = [-beta / (1 + math.exp(beta * x)) for x in h]  # d/dh −log σ(βh) = −β σ(−βh)
    else:
        hand = [(x - 1 / (2 * beta)) ** 2 for x in h]
        d_h = [2 * (x - 1 / (2 * beta)) for x in h]
    assert terms.margin.tolist() == pytest.approx(h, rel=1e-5)
    assert terms.loss.tolist() == pytest.approx(hand, rel=1e-5)
    assert terms.chosen_reward.tolist() == pytest.approx([beta * ratios[0], beta * ratios[1]], rel=1e-5)
    # ∂ℓ/∂log π(y⁺_t) = m_t ∂ℓ/∂h, ∂ℓ/∂log π(y⁻_t) = −m_t ∂ℓ/∂h, each pair's ℓ weighted 1/2 by the mean.
    expected = torch.zeros(4, 4)
    for pair in range(2):
        expected[pair] = mask[pair] * d_h[pair] / 2
        expected[pair + 2] = -mask[pair + 2] * d_h[pair] / 2
    torch.testing.assert_close(leaf.grad, expected, rtol=1e-5, atol=1e-7)


def test_masked_tokens_get_exactly_zero_gradient_and_do_not_change_the_loss():
    logp, ref, mask = _toy()
    for loss in ("sigmoid", "ipo"):
        for normalize in (False, True):
            values = []
            for shift in (0.0, 3.0):  # move log π and log π_ref of every tool/padding token
                leaf = (logp + shift * (1 - mask)).requires_grad_(True)
                seq, ref_seq = sequence_logprobs(leaf, mask, normalize), sequence_logprobs(ref - shift * (1 - mask), mask, normalize)
                value = dpo_loss(seq[:2], seq[2:], ref_seq[:2], ref_seq[2:], 0.1, loss).loss.mean()
                value.backward()
                assert (leaf.grad[mask == 0] == 0).all(), (loss, normalize)
                assert (leaf.grad[mask == 1] != 0).all(), (loss, normalize)
                values.append(value.item())
            assert values[0] == values[1]


def test_length_normalised_log_prob_is_the_mean_over_policy_tokens():
    logp, _, mask = _toy()
    means = sequence_logprobs(logp, mask, length_normalize=True)
    by_hand = [sum(logp[i, t].item() for t in range(4) if mask[i, t]) / mask[i].sum().item() for i in range(4)]
    assert means.tolist() == pytest.approx(by_hand, rel=1e-6)


# --- pairs -------------------------------------------------------------------------------------------


def _trajectory(*segments):
    trajectory = Trajectory()
    for source, ids in segments:
        trajectory.append(source, ids)
    return trajectory


def _episode(group, reward, ids):
    return SimpleNamespace(group=group, reward=reward, trajectory=_trajectory(("prompt", [1, 2]), ("policy", ids)),
                           question={"id": f"q{group}", "question": f"question {group}", "answers": ["x"]})


def test_pairs_from_rollout_pair_the_best_with_the_worst_sample_of_each_question(tokenizer):
    episodes = [_episode(0, 0.1, [3]), _episode(0, 1.0, [4]), _episode(0, 1.0, [5]), _episode(0, 0.1, [6]),
                _episode(1, 0.5, [7]), _episode(1, 0.5, [8]),  # all equal: no pair
                _episode(2, 0.9, [9]), _episode(2, 0.0, [10])]
    pairs = pairs_from_rollout(episodes, tokenizer)
    assert [(p.question["id"], p.chosen_trajectory.token_ids[-1], p.rejected_trajectory.token_ids[-1]) for p in pairs] == [
        ("q0", 4, 3),  # the first of the equal best and of the equal worst
        ("q2", 9, 10),
    ]
    assert pairs[0].chosen_trajectory.policy_mask == [0, 0, 1]
    assert (pairs[0].chosen_reward, pairs[0].rejected_reward) == (1.0, 0.1)
    assert pairs[0].chosen == tokenizer.decode([4])  # the text, for reading and for TRL's readers
    assert [p.question["id"] for p in pairs_from_rollout(episodes, tokenizer, min_reward_gap=0.89)] == ["q0", "q2"]
    assert pairs_from_rollout(episodes, tokenizer, min_reward_gap=0.9) == []


def _preference_pair(chosen_ids, rejected_ids, chosen_reward=1.0, rejected_reward=0.0):
    return PreferencePair(
        chosen="c", rejected="r", prompt="p", question={"id": "q7", "question": "Q?"},
        chosen_reward=chosen_reward, rejected_reward=rejected_reward,
        chosen_trajectory=_trajectory(("prompt", [1]), ("policy", chosen_ids), ("tool", [5])),
        rejected_trajectory=_trajectory(("prompt", [1]), ("policy", rejected_ids)),
    )


def test_pairs_round_trip_through_the_reward_models_pairs_format(tmp_path):
    pairs = [_preference_pair([2, 3], [4])]
    path = tmp_path / "pairs.jsonl"
    append_pairs(path, 3, pairs)
    append_pairs(path, 4, pairs)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 4]
    assert {"prompt", "chosen", "rejected", "chosen_segments", "rejected_segments"} <= set(records[0])
    assert read_pairs(path, vocab_size=10) == pairs * 2
    assert read_preference_pairs(path) == pairs * 2  # what agentenv rm train reads


GOOD = json.dumps({"chosen": "c", "rejected": "r",
                   "chosen_segments": [{"source": "prompt", "token_ids": [1]}, {"source": "policy", "token_ids": [2]}],
                   "rejected_segments": [{"source": "prompt", "token_ids": [1]}, {"source": "policy", "token_ids": [3]}]})


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("not json", r"pairs\.jsonl:2: not JSON"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}', r"pairs\.jsonl: pair 2 is text only; DPO needs both"),
        (GOOD.replace("[2]", "[99]"), r"pair 2: chosen holds ids outside the tokenizer's vocabulary \(0 … 9\)"),
        (GOOD.replace('"policy", "token_ids": [3]', '"tool", "token_ids": [3]'), r"pair 2: rejected has no policy segment"),
    ],
)
def test_a_pair_that_does_not_fit_names_the_file_the_pair_and_the_side(tmp_path, record, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(GOOD + "\n" + record + "\n")
    with pytest.raises(ValueError, match=message):
        read_pairs(path, vocab_size=10)


def test_dpo_config_is_checked():
    with pytest.raises(ConfigError, match=r"dpo\.loss"):
        load_config(None, ["mode=dpo", "dpo.loss=hinge"])
    with pytest.raises(ConfigError, match=r"dpo\.samples_per_question must be at least 2"):
        load_config(None, ["mode=dpo", "dpo.samples_per_question=1"])
    with pytest.raises(ConfigError, match=r"dpo\.reference: 'base' is the LoRA policy"):
        load_config(None, ["mode=dpo", "lora.enabled=false", "dpo.reference=base"])


# --- the update on a tiny real model ------------------------------------------------------------------


def _pairs(vocab, generator, tool_at_end=3):
    """Three pairs: prompt, policy, tool, policy, and a closing tool segment of ``tool_at_end`` tokens."""
    def side(prompt, policy1, tool, policy2):
        def ids(n):
            return torch.randint(3, vocab, (n,), generator=generator).tolist()

        return _trajectory(("prompt", ids(prompt)), ("policy", ids(policy1)), ("tool", ids(tool)),
                           ("policy", ids(policy2)), ("tool", ids(tool_at_end)))

    shapes = [((5, 4, 3, 2), (5, 2, 3, 4)), ((6, 3, 0, 0), (6, 5, 2, 1)), ((5, 2, 2, 2), (5, 3, 1, 1))]
    return [PreferencePair("c", "r", question={"id": f"q{i}"}, chosen_reward=1.0, rejected_reward=0.0,
                           chosen_trajectory=side(*chosen), rejected_trajectory=side(*rejected))
            for i, (chosen, rejected) in enumerate(shapes)]


def _update(tokenizer, pairs, config, lr=0.0, reference=True):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    grads = {}
    original = optimizer.step

    def capture():
        grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        original()

    optimizer.step = capture
    metrics = dpo_update(model, optimizer, pairs, config, tokenizer.pad_token_id,
                         reference_model=tiny_random_model(tokenizer) if reference else None, max_grad_norm=None)
    return metrics, grads, model


def test_the_starting_policy_as_reference_gives_margin_zero_and_loss_log_2(tokenizer):
    pairs = _pairs(len(tokenizer), torch.Generator().manual_seed(0))
    metrics, grads, _ = _update(tokenizer, pairs, DPOConfig())
    assert metrics["dpo/margin"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert metrics["dpo/pairs"] == 3
    sides = [side for p in pairs for side in (p.chosen_trajectory, p.rejected_trajectory)]
    assert metrics["update/policy_tokens"] == sum(sum(side.policy_mask) for side in sides)
    assert metrics["dpo/reward_gap"] == 1.0
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_tool_tokens_get_no_loss(tokenizer):
    """Tool output that closes each side conditions no policy token: new ids there must leave the
    gradient exactly as it was, which holds only if tool tokens are out of both log-ratios."""
    generator = torch.Generator().manual_seed(1)
    pairs = _pairs(len(tokenizer), generator)
    changed = []
    for pair in pairs:
        sides = []
        for side in (pair.chosen_trajectory, pair.rejected_trajectory):
            closing = torch.randint(3, len(tokenizer), (3,), generator=generator).tolist()
            sides.append(_trajectory(*[(s.source, s.token_ids) for s in side.segments[:-1]], ("tool", closing)))
        changed.append(dataclasses.replace(pair, chosen_trajectory=sides[0], rejected_trajectory=sides[1]))
    config = DPOConfig(micro_batch_size=3)
    _, grads, _ = _update(tokenizer, pairs, config)
    _, changed_grads, _ = _update(tokenizer, changed, config)
    for name, grad in grads.items():
        assert torch.equal(grad, changed_grads[name]), name


def test_micro_batches_accumulate_to_the_full_batch_gradient(tokenizer):
    pairs = _pairs(len(tokenizer), torch.Generator().manual_seed(2))
    _, one, _ = _update(tokenizer, pairs, DPOConfig(micro_batch_size=1))
    _, all_at_once, _ = _update(tokenizer, pairs, DPOConfig(micro_batch_size=3))
    for name, grad in one.items():
        torch.testing.assert_close(grad, all_at_once[name], rtol=1e-4, atol=1e-7)


def test_lora_base_reference_is_the_model_with_its_adapter_disabled(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_random_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    pairs = _pairs(len(tokenizer), torch.Generator().manual_seed(3))
    config = DPOConfig(reference="base", beta=0.5)
    first = dpo_update(model, optimizer, pairs, config, tokenizer.pad_token_id)
    assert first["dpo/margin"] == pytest.approx(0.0, abs=1e-6)  # LoRA's B starts at 0
    later = [dpo_update(model, optimizer, pairs, config, tokenizer.pad_token_id) for _ in range(3)]
    assert later[-1]["dpo/margin"] > 0 and later[-1]["loss"] < first["loss"]


def test_an_update_without_pairs_is_skipped(tokenizer):
    model = tiny_random_model(tokenizer)
    metrics = dpo_update(model, torch.optim.SGD(model.parameters(), lr=0.1), [], DPOConfig(), 0)
    assert metrics == {"update/skipped": 1.0, "dpo/pairs": 0.0}


# --- in the trainer ------------------------------------------------------------------------------------


def test_a_run_trains_on_the_pairs_file_another_run_wrote(tmp_path):
    from test_learning import TINY_RUN, register_no_spaces_env

    from agentenv.trainers.loop.train import train

    register_no_spaces_env()
    base = [*TINY_RUN, "mode=dpo", "dpo.questions_per_step=2", "dpo.samples_per_question=4", "checkpoint.every=10"]
    train(load_config(None, [*base, "max_steps=2"]), tmp_path / "online")
    written = (tmp_path / "online" / "pairs.jsonl").read_text().splitlines()
    assert written and {json.loads(line)["step"] for line in written} <= {1, 2}

    offline = [*base, "max_steps=3", f"dpo.pairs={tmp_path / 'online' / 'pairs.jsonl'}", "dpo.pairs_per_step=2"]
    train(load_config(None, offline), tmp_path / "offline")
    records = [json.loads(line) for line in (tmp_path / "offline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["dpo/pairs"] for r in records] == [2, 2, 2]
    assert all("reward/mean" not in r for r in records)  # nothing was sampled
    state = json.loads(next((tmp_path / "offline" / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["item_cursor"] == 6
    assert not (tmp_path / "offline" / "pairs.jsonl").exists()
    with pytest.raises(ConfigError, match=r"dpo\.pairs: .*no such pairs file"):
        train(load_config(None, [*offline, f"dpo.pairs={tmp_path / 'missing.jsonl'}"]), tmp_path / "missing")
