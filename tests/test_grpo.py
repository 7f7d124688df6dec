"""The GRPO objective, checked against hand computations on toy tensors and on a tiny real model."""

import math

import pytest
import torch

from agentenv.models import tiny_random_model
from agentenv.trainers.algorithms.grpo import (
    LOSS_AGGREGATIONS,
    GRPOConfig,
    aggregate_loss,
    group_advantages,
    grpo_token_loss,
    grpo_update,
    informative_groups,
    k3_kl,
)
from agentenv.trainers.algorithms.logprobs import batch_logprobs, pad_trajectories, token_logprobs
from agentenv.trainers.algorithms.update import lr_multiplier
from agentenv.trajectory import Episode

# --- advantages ----------------------------------------------------------------------------------


def test_advantage_is_reward_minus_group_mean():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 6.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    advantages = group_advantages(rewards, groups, scale_by_std=False)
    assert advantages.tolist() == [0.5, -0.5, -0.5, 0.5, -1.0, -1.0, -1.0, 3.0]


def test_advantage_divided_by_group_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 6.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    advantages = group_advantages(rewards, groups, scale_by_std=True, eps=0.0)
    # Unbiased std: group 0 → sqrt(4 · 0.25 / 3); group 1 → sqrt((3 · 1 + 9) / 3) = 2.
    std0 = math.sqrt(1.0 / 3.0)
    expected = [0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0, -0.5, -0.5, -0.5, 1.5]
    assert advantages.tolist() == pytest.approx(expected, rel=1e-6)


def test_groups_are_keyed_by_id_not_position():
    rewards = torch.tensor([1.0, 3.0, 0.0, 5.0])
    groups = torch.tensor([7, 2, 7, 2])
    advantages = group_advantages(rewards, groups, scale_by_std=False)
    assert advantages.tolist() == [0.5, -1.0, -0.5, 1.0]


def test_equal_reward_group_has_zero_advantage_and_is_filtered():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    advantages = group_advantages(rewards, groups, scale_by_std=True)
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert informative_groups(rewards, groups).tolist() == [False, False, False, True, True, True]


# --- KL -------------------------------------------------------------------------------------------


def test_k3_kl_is_zero_when_equal_and_positive_otherwise():
    logp = torch.log(torch.tensor([0.5, 0.5, 0.1, 0.9]))
    ref = torch.log(torch.tensor([0.5, 0.25, 0.3, 0.2]))
    kl = k3_kl(logp, ref)
    assert kl[0].item() == 0.0
    assert (kl[1:] > 0).all()
    # ref/π = 0.5: 0.5 − log 0.5 − 1
    assert kl[1].item() == pytest.approx(0.5 - math.log(0.5) - 1, rel=1e-6)


# --- the loss and its gradient, by hand ----------------------------------------------------------


def _toy():
    # 2 sequences × 4 tokens; the mask leaves 3 policy tokens in row 0 and 2 in row 1.
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.6, 0.3], [0.4, 0.9, 0.5, 0.25]]))
    old = torch.log(torch.tensor([[0.5, 0.1, 0.5, 0.3], [0.5, 0.5, 0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.4, 0.2, 0.6, 0.3], [0.5, 0.5, 0.6, 0.5]]))
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    advantages = torch.tensor([1.0, -2.0])
    return logp, old, ref, mask, advantages


def _hand_loss_and_grad(logp, old, ref, mask, advantages, config, mode, max_len):
    """Per-token loss and d loss / d logp written out element by element."""
    n, t = logp.shape
    token_loss = [[0.0] * t for _ in range(n)]
    token_grad = [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            A = (advantages[i, j] if advantages.dim() == 2 else advantages[i]).item()  # A_{i,t} or A_i
            rho = math.exp(logp[i, j].item() - old[i, j].item())
            clipped = min(max(rho, 1 - config.clip_eps_low), 1 + config.clip_eps_high)
            unclipped_term, clipped_term = rho * A, clipped * A
            # −min(ρA, clip(ρ)A): the gradient flows only when the unclipped term is the min.
            token_loss[i][j] = -min(unclipped_term, clipped_term)
            token_grad[i][j] = -rho * A if unclipped_term <= clipped_term else 0.0
            d = ref[i, j].item() - logp[i, j].item()
            token_loss[i][j] += config.kl_beta * (math.exp(d) - d - 1)
            token_grad[i][j] += config.kl_beta * (1 - math.exp(d))
    # Weights w_ij with loss = Σ w_ij ℓ_ij.
    counts = [sum(mask[i].tolist()) for i in range(n)]
    weights = [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            if mask[i, j] == 0:
                continue
            if mode == "token-mean":
                weights[i][j] = 1 / sum(counts)
            elif mode == "seq-mean-token-mean":
                weights[i][j] = 1 / counts[i] / n
            else:
                weights[i][j] = 1 / max_len / n
    loss = sum(weights[i][j] * token_loss[i][j] for i in range(n) for j in range(t))
    grad = [[weights[i][j] * token_grad[i][j] for j in range(t)] for i in range(n)]
    return loss, torch.tensor(grad)


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_loss_and_gradient_match_hand_computation(mode):
    logp, old, ref, mask, advantages = _toy()
    config = GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.28, kl_beta=0.1, loss_agg=mode)
    logp = logp.clone().requires_grad_(True)
    terms = grpo_token_loss(logp, old, advantages, ref, config)
    loss = aggregate_loss(terms.loss, mask, mode, mask.sum().item(), 2, max_response_tokens=8)
    loss.backward()
    expected_loss, expected_grad = _hand_loss_and_grad(logp.detach(), old, ref, mask, advantages, config, mode, 8)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    torch.testing.assert_close(logp.grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_per_token_process_advantages_enter_the_loss_as_a_plus_p():
    logp, old, ref, mask, advantages = _toy()
    process = torch.tensor([[0.5, 0.0, 0.0, -3.0], [0.0, 0.25, 0.25, 0.0]])  # P_{i,t}: A + P flips a sign
    config = GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.28, kl_beta=0.1)
    logp = logp.clone().requires_grad_(True)
    per_token = advantages.unsqueeze(1) + process
    terms = grpo_token_loss(logp, old, per_token, ref, config)
    loss = aggregate_loss(terms.loss, mask, "token-mean", mask.sum().item(), 2)
    loss.backward()
    expected_loss, expected_grad = _hand_loss_and_grad(logp.detach(), old, ref, mask, per_token, config, "token-mean", 8)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
    torch.testing.assert_close(logp.grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_clip_higher_uses_separate_bounds():
    # ρ = 1.25 with A > 0: inside [0.8, 1.28] (clip-higher), clipped at 1.2 with the symmetric bound.
    logp, old = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.4]]))
    advantages = torch.tensor([1.0])
    symmetric = grpo_token_loss(logp, old, advantages, None, GRPOConfig(clip_eps_high=0.2))
    higher = grpo_token_loss(logp, old, advantages, None, GRPOConfig(clip_eps_high=0.28))
    assert symmetric.clipped_high.item() and not higher.clipped_high.item()
    assert symmetric.loss.item() == pytest.approx(-1.2)
    assert higher.loss.item() == pytest.approx(-1.25)


def test_masked_tokens_get_exactly_zero_gradient():
    logp, old, ref, mask, advantages = _toy()
    for mode in LOSS_AGGREGATIONS:
        leaf = logp.clone().requires_grad_(True)
        terms = grpo_token_loss(leaf, old, advantages, ref, GRPOConfig(kl_beta=0.5, loss_agg=mode))
        aggregate_loss(terms.loss, mask, mode, mask.sum().item(), 2, max_response_tokens=8).backward()
        assert (leaf.grad[mask == 0] == 0).all(), mode
        assert (leaf.grad[mask == 1] != 0).any(), mode


def test_lr_warms_up_linearly_then_follows_the_schedule():
    assert [lr_multiplier(s, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [lr_multiplier(s, 2, 12, "cosine", min_lr_ratio=0.1) for s in (2, 7, 12)]
    assert cosine == pytest.approx([1.0, 0.55, 0.1])


# --- on a tiny real model ----------------------------------------------------------------------


def _episodes(vocab: int, seed: int = 0):
    """Two groups of two episodes: prompt, policy, tool, policy segments of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    episodes = []
    for i, (prompt, policy1, tool, policy2) in enumerate([(5, 4, 3, 2), (5, 3, 4, 4), (6, 2, 0, 0), (6, 5, 2, 1)]):
        ids = torch.randint(3, vocab, (prompt + policy1 + tool + policy2,), generator=generator).tolist()
        mask = [0] * prompt + [1] * policy1 + [0] * tool + [1] * policy2
        episodes.append(Episode.from_tokens(ids, mask, reward=float(i % 2 + i // 2), group=i // 2))
    return episodes


def test_padding_and_shift_align_logprobs_with_their_tokens(tokenizer):
    model = tiny_random_model(tokenizer)
    episodes = _episodes(len(tokenizer))
    batch = pad_trajectories([e.token_ids for e in episodes], [e.policy_mask for e in episodes], tokenizer.pad_token_id)
    assert batch.start == 5  # the shortest prompt
    logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.start)
    for row, episode in enumerate(episodes):
        ids = torch.tensor([episode.token_ids])
        full = torch.log_softmax(model(ids).logits[0].float(), -1)
        for t in range(batch.start, len(episode.token_ids)):
            # The logits at t−1 score token t.
            assert logp[row, t - batch.start].item() == pytest.approx(full[t - 1, episode.token_ids[t]].item(), abs=1e-4)
        # Padding and non-policy positions are outside the mask.
        mask = batch.targets_mask(torch.tensor([row]), batch.input_ids.shape[1])[0]
        assert mask.tolist() == [float(m) for m in episode.policy_mask[batch.start :]] + [0.0] * (
            batch.input_ids.shape[1] - len(episode.token_ids)
        )


def test_single_pass_update_has_ratio_one_and_no_clipping(tokenizer):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = grpo_update(model, optimizer, _episodes(len(tokenizer)), GRPOConfig(), tokenizer.pad_token_id)
    assert metrics["ratio/mean"] == pytest.approx(1.0)
    assert metrics["clip_fraction/low"] == metrics["clip_fraction/high"] == 0.0
    assert metrics["grad_norm"] > 0
    assert metrics["update/policy_tokens"] == sum(sum(e.policy_mask) for e in _episodes(len(tokenizer)))


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_micro_batches_accumulate_to_the_full_batch_gradient(tokenizer, mode):
    params = []
    for micro_batch_size in (1, 4):
        model = tiny_random_model(tokenizer)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        config = GRPOConfig(loss_agg=mode, micro_batch_size=micro_batch_size, max_response_tokens=16)
        grpo_update(model, optimizer, _episodes(len(tokenizer)), config, tokenizer.pad_token_id, max_grad_norm=None)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=1e-4, atol=1e-6)


def test_epochs_and_minibatches_take_several_optimizer_steps(tokenizer):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = GRPOConfig(epochs=2, minibatch_size=2, micro_batch_size=1)
    metrics = grpo_update(
        model, optimizer, _episodes(len(tokenizer)), config, tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert metrics["update/optimizer_steps"] == 4
    # logπ_old was computed once, before the first step: the second minibatch sees moved weights.
    assert metrics["ratio/mean"] != 1.0


def test_filtering_drops_equal_reward_groups(tokenizer):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    episodes = _episodes(len(tokenizer))
    episodes[1].reward = episodes[0].reward  # group 0 now has equal rewards
    config = GRPOConfig(filter_equal_reward_groups=True)
    metrics = grpo_update(model, optimizer, episodes, config, tokenizer.pad_token_id)
    assert metrics["groups/equal_reward_fraction"] == 0.5
    assert metrics["update/sequences"] == 2


def test_oversampling_trains_on_the_first_b_groups_whose_rewards_differ(tokenizer):
    """Dynamic sampling: of three groups (one all-equal), B = 1 keeps the first informative one, and
    the update is the update on that group alone."""
    episodes = _episodes(len(tokenizer)) + _episodes(len(tokenizer), seed=1)[:2]
    for episode in episodes[4:]:
        episode.group = 2
    episodes[1].reward = episodes[0].reward  # group 0: all equal; groups 1 and 2 differ
    updated = []
    for batch, config in [
        (episodes, GRPOConfig(questions_per_step=1, oversample=3.0)),
        (episodes[2:4], GRPOConfig(questions_per_step=1)),
    ]:
        model = tiny_random_model(tokenizer)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        metrics = grpo_update(model, optimizer, batch, config, tokenizer.pad_token_id)
        updated.append((metrics, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (oversampled, weights), (alone, alone_weights) = updated
    assert oversampled["update/sequences"] == 2 and oversampled["groups/trained"] == 1
    assert oversampled["groups/equal_reward_fraction"] == pytest.approx(1 / 3)
    assert oversampled["loss"] == pytest.approx(alone["loss"], abs=1e-6)
    torch.testing.assert_close(weights, alone_weights)


def test_oversampling_rolls_out_more_questions_than_it_trains_on():
    config = GRPOConfig(questions_per_step=16, oversample=2.5)
    assert config.rollout_questions == 40
    assert GRPOConfig(questions_per_step=3, oversample=1.5).rollout_questions == 5  # ⌈4.5⌉
    assert GRPOConfig(questions_per_step=4).rollout_questions == 4
    with pytest.raises(ValueError, match="oversample must be at least 1"):
        GRPOConfig(oversample=0.5).validate()


def test_lora_reference_is_the_model_with_its_adapter_disabled(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_random_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    config = GRPOConfig(kl_beta=0.1)
    episodes = _episodes(len(tokenizer))
    first = grpo_update(model, optimizer, episodes, config, tokenizer.pad_token_id)
    # LoRA's B starts at zero: before the first step the policy is the reference.
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)
    later = [grpo_update(model, optimizer, episodes, config, tokenizer.pad_token_id)["kl"] for _ in range(3)]
    assert later[-1] > 0


def test_lora_reference_start_is_the_warm_started_policy_not_the_base_model(tokenizer):
    import copy

    from agentenv.trainers import algorithms

    # A LoRA policy whose adapter is already trained (init_lora_weights=False: B is not zero), as
    # after an SFT warm start: the base model is far from it, the frozen copy is the policy itself.
    model = _policy_model(tokenizer, lora=True)
    grpo = algorithms.get("grpo")
    assert grpo.reference_copy(GRPOConfig(kl_beta=0.1, reference="start"), True)
    assert not grpo.reference_copy(GRPOConfig(kl_beta=0.1), True) and not grpo.reference_copy(GRPOConfig(reference="start"), True)
    start = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    episodes = _episodes(len(tokenizer))
    to_start = grpo_update(model, optimizer, episodes, GRPOConfig(kl_beta=0.1, reference="start"), tokenizer.pad_token_id,
                           reference_model=start)
    to_base = grpo_update(model, optimizer, episodes, GRPOConfig(kl_beta=0.1), tokenizer.pad_token_id)
    assert to_start["kl"] == pytest.approx(0.0, abs=1e-7) and to_base["kl"] > 1e-4
    with pytest.raises(ValueError, match="grpo.reference must be one of"):
        GRPOConfig(reference="sft").validate()


def test_full_finetuning_with_kl_needs_a_reference(tokenizer):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="reference"):
        grpo_update(model, optimizer, _episodes(len(tokenizer)), GRPOConfig(kl_beta=0.1), tokenizer.pad_token_id)
    reference = tiny_random_model(tokenizer)
    metrics = grpo_update(
        model, optimizer, _episodes(len(tokenizer)), GRPOConfig(kl_beta=0.1), tokenizer.pad_token_id,
        reference_model=reference,
    )
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-7)  # same seed, same weights


def test_engine_logprob_gap_is_logged(tokenizer):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    episodes = _episodes(len(tokenizer))
    for episode in episodes:
        episode.engine_logprobs = [0.0] * sum(episode.policy_mask)
    metrics = grpo_update(model, optimizer, episodes, GRPOConfig(), tokenizer.pad_token_id)
    # log π ≤ 0, so |0 − log π| is the mean NLL, about log(vocab) for a random model.
    assert metrics["logprob_gap/engine_vs_trainer"] == pytest.approx(math.log(len(tokenizer)), rel=0.1)


class _FullForward(torch.nn.Module):
    """The same parameters behind a plain forward: ``token_logprobs`` then projects every position."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return self.model(**kwargs)


def test_projecting_only_policy_positions_keeps_logprobs_and_entropy(tokenizer):
    model = tiny_random_model(tokenizer)
    episodes = _episodes(len(tokenizer))
    batch = pad_trajectories([e.token_ids for e in episodes], [e.policy_mask for e in episodes], tokenizer.pad_token_id)
    mask = batch.targets_mask(torch.arange(len(batch)), batch.input_ids.shape[1])
    args = (batch.input_ids, batch.attention_mask, batch.start, 0.7)
    fast, fast_entropy = token_logprobs(model, *args, with_entropy=True, target_mask=mask)
    full, full_entropy = token_logprobs(_FullForward(model), *args, with_entropy=True, target_mask=mask)
    torch.testing.assert_close(fast, full * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_entropy, full_entropy * mask, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_projecting_only_policy_positions_keeps_loss_and_gradients(tokenizer, mode):
    results = []
    for wrap in (lambda m: m, _FullForward):
        model = tiny_random_model(tokenizer)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        config = GRPOConfig(loss_agg=mode, micro_batch_size=2, max_response_tokens=16, epochs=2, minibatch_size=2)
        metrics = grpo_update(
            wrap(model), optimizer, _episodes(len(tokenizer)), config, tokenizer.pad_token_id,
            max_grad_norm=None, generator=torch.Generator().manual_seed(0),
        )
        results.append((metrics, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (fast, fast_params), (full, full_params) = results
    for key in ("loss", "entropy", "ratio/mean", "grad_norm"):
        assert fast[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(fast_params, full_params, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_the_path_before_the_lean_update_gives_the_same_update(tokenizer, mode):
    # lean_update=False is bench/update.py's baseline: it must compute the same step, only slower.
    results = []
    for lean in (True, False):
        model = tiny_random_model(tokenizer)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        config = GRPOConfig(loss_agg=mode, micro_batch_size=2, max_response_tokens=16, lean_update=lean)
        metrics = grpo_update(model, optimizer, _episodes(len(tokenizer)), config, tokenizer.pad_token_id, max_grad_norm=None)
        results.append((metrics, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (lean, lean_params), (before, before_params) = results
    for key in ("loss", "entropy", "grad_norm"):
        assert lean[key] == pytest.approx(before[key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(lean_params, before_params, rtol=1e-4, atol=1e-6)


def test_micro_batches_group_similar_lengths_and_keep_every_row():
    from agentenv.trainers.algorithms.logprobs import micro_batches

    lengths = torch.tensor([9, 3, 7, 3, 12, 5])
    parts = micro_batches(torch.tensor([0, 2, 3, 4, 5]), lengths, 2)
    assert [p.tolist() for p in parts] == [[3, 5], [2, 0], [4]]


# --- the shared prefix: a group's prompt computed once ------------------------------------------


def _group_episodes(vocab: int, seed: int = 0):
    """Two groups of three episodes; the members of a group share their prompt and differ after it.

    Group 0's two shortest members (one micro-batch of 2) also share their first two policy tokens,
    so their common prefix ends inside the policy tokens, one token before the shorter row's end.
    """
    generator = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    episodes = []
    for group, (prompt_length, members, rewards) in enumerate(
        [(6, [(2, 0, 0), (4, 3, 2), (3, 4, 4)], [0.0, 1.0, 0.5]), (5, [(5, 2, 1), (3, 3, 3), (4, 1, 2)], [1.0, 0.0, 2.0])]
    ):
        prompt = tokens(prompt_length)
        first_policy = tokens(2)
        for (policy1, tool, policy2), reward in zip(members, rewards, strict=True):
            policy = first_policy + tokens(policy1 - 2) if group == 0 and policy1 != 3 else tokens(policy1)
            ids = prompt + policy + tokens(tool + policy2)
            mask = [0] * prompt_length + [1] * policy1 + [0] * tool + [1] * policy2
            episodes.append(Episode.from_tokens(ids, mask, reward=reward, group=group))
    return episodes


def _policy_model(tokenizer, lora: bool):
    model = tiny_random_model(tokenizer)
    if not lora:
        return model
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)  # init_lora_weights=False: B is random too, so the adapter is on from the start
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def _embedded_shapes(model):
    """The [batch, tokens] of every forward pass through the model's embedding, as a list that fills."""
    shapes = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


def test_group_micro_batches_hold_one_group_each_in_chunks_of_similar_lengths():
    from agentenv.trainers.algorithms.logprobs import group_micro_batches

    lengths = torch.tensor([9, 3, 7, 3, 12, 5, 8])
    groups = torch.tensor([1, 0, 1, 0, 1, 1, 0])
    parts = group_micro_batches(torch.tensor([0, 1, 2, 3, 4, 5, 6]), groups, lengths, 3)
    assert [p.tolist() for p in parts] == [[1, 3, 6], [5, 2, 0], [4]]


def test_a_groups_prompt_runs_once_and_the_suffixes_on_top_of_it(tokenizer):
    model = tiny_random_model(tokenizer)
    shapes = _embedded_shapes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    episodes = _group_episodes(len(tokenizer))
    grpo_update(model, optimizer, episodes, GRPOConfig(shared_prefix=True), tokenizer.pad_token_id)
    # Group 0 (prompt 6, longest member 17 tokens), then group 1 (prompt 5, longest 14).
    assert shapes == [(1, 6), (3, 11), (1, 5), (3, 9)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_sharing_the_prompt_gives_the_same_update(tokenizer, mode, lora):
    # micro_batch_size 2 < G = 3: each group is split in two micro-batches, the second of one row.
    results = []
    for shared in (True, False):
        model = _policy_model(tokenizer, lora)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        config = GRPOConfig(loss_agg=mode, micro_batch_size=2, max_response_tokens=16, shared_prefix=shared,
                            kl_beta=0.1 if lora else 0.0)
        metrics = grpo_update(model, optimizer, _group_episodes(len(tokenizer)), config, tokenizer.pad_token_id,
                              max_grad_norm=None)
        results.append((metrics, torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])))
    (shared, shared_params), (whole, whole_params) = results
    for key in ("loss", "entropy", "grad_norm", "kl"):
        assert shared[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
    assert shared["grad_norm"] > 0 and (not lora or shared["kl"] > 0)
    torch.testing.assert_close(shared_params, whole_params, rtol=1e-4, atol=1e-6)


def test_sharing_the_prompt_keeps_the_logprobs_of_several_epochs(tokenizer):
    # μ > 1: logπ_old comes from batch_logprobs, and there the group's prompt runs once too.
    model = tiny_random_model(tokenizer)
    episodes = _group_episodes(len(tokenizer))
    batch = pad_trajectories([e.token_ids for e in episodes], [e.policy_mask for e in episodes], tokenizer.pad_token_id)
    groups = torch.tensor([e.group for e in episodes])
    shared = batch_logprobs(model, batch, 2, temperature=0.7, groups=groups)
    whole = batch_logprobs(model, batch, 2, temperature=0.7)
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)
    assert (shared != 0).sum() == batch.policy_mask[:, batch.start :].sum()


def test_under_gradient_checkpointing_the_rows_run_whole(tokenizer):
    # Checkpointed layers drop the cache in training, so the prefix cannot be shared there.
    model = tiny_random_model(tokenizer)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shapes = _embedded_shapes(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = grpo_update(model, optimizer, _group_episodes(len(tokenizer)), GRPOConfig(shared_prefix=True),
                          tokenizer.pad_token_id)
    assert all(rows == 3 for rows, _ in shapes)
    plain = tiny_random_model(tokenizer)
    whole = grpo_update(plain, torch.optim.SGD(plain.parameters(), lr=0.1),
                        _group_episodes(len(tokenizer)), GRPOConfig(), tokenizer.pad_token_id)
    assert metrics["loss"] == pytest.approx(whole["loss"], rel=1e-4, abs=1e-6)


def test_the_shared_prefix_needs_the_lean_update():
    with pytest.raises(ValueError, match="grpo.shared_prefix needs grpo.lean_update: true"):
        GRPOConfig(shared_prefix=True, lean_update=False).validate()


# --- one step off the policy ---------------------------------------------------------------------


def _policy_logprobs(model, episode):
    """log π_θ of each policy token of one episode, from a plain forward pass over it alone."""
    ids = torch.tensor([episode.token_ids])
    full = torch.log_softmax(model(ids).logits[0].float(), -1)
    return [full[t - 1, episode.token_ids[t]] for t, m in enumerate(episode.policy_mask) if m]


def test_off_policy_ratio_is_taken_against_the_engine_logprobs_by_hand(tokenizer):
    model = tiny_random_model(tokenizer)
    episodes = _episodes(len(tokenizer))
    # The behaviour policy's logprobs e_{i,t} = logπ_θ − δ, so ρ = exp(δ): inside the clip range,
    # beyond 1 + eps_high and below 1 − eps_low.
    deltas = [0.1, 0.5, -0.5, -0.05]
    with torch.no_grad():
        for episode in episodes:
            logp = _policy_logprobs(model, episode)
            episode.engine_logprobs = [lp.item() - deltas[t % 4] for t, lp in enumerate(logp)]
    config = GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.28)

    # By hand: A_i = (r_i − mean) / (std + eps) of rewards 0, 1 | 1, 2 -> ∓0.7071 in each group;
    # ℓ = −min(ρ A, clip(ρ) A) per policy token, token-mean over all of them.
    advantage = [-1 / math.sqrt(2), 1 / math.sqrt(2)] * 2
    hand_loss, ratios, clipped = 0.0, [], 0
    terms = []
    for i, episode in enumerate(episodes):
        for logp, engine in zip(_policy_logprobs(model, episode), episode.engine_logprobs, strict=True):
            rho = torch.exp(logp - engine)
            bounded = torch.clamp(rho, 1 - config.clip_eps_low, 1 + config.clip_eps_high)
            A = advantage[i] / (1 + 1e-6 * math.sqrt(2))  # the eps of the std
            terms.append(-torch.min(rho * A, bounded * A))
            ratios.append(rho.item())
            clipped += int((rho.item() > 1.28 and A > 0) or (rho.item() < 0.8 and A < 0))
    hand = torch.stack(terms).mean()
    hand.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    hand_loss = hand.item()
    model.zero_grad(set_to_none=True)

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    metrics = grpo_update(model, optimizer, episodes, config, tokenizer.pad_token_id,
                          max_grad_norm=None, behaviour_logprobs=True)

    assert metrics["loss"] == pytest.approx(hand_loss, rel=1e-4)
    assert metrics["ratio/mean"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-4)
    assert clipped > 0
    assert metrics["clip_fraction/low"] + metrics["clip_fraction/high"] == pytest.approx(clipped / len(ratios))
    for p, b, g in zip(model.parameters(), before, expected_grads, strict=True):
        torch.testing.assert_close(b - p.detach(), g, rtol=1e-3, atol=1e-6)  # SGD, lr 1: the step is the gradient


def test_off_policy_update_with_the_trainers_own_logprobs_is_the_on_policy_update(tokenizer):
    params = []
    for behaviour in (False, True):
        model = tiny_random_model(tokenizer)
        episodes = _episodes(len(tokenizer))
        with torch.no_grad():
            for episode in episodes:
                episode.engine_logprobs = [lp.item() for lp in _policy_logprobs(model, episode)]
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        metrics = grpo_update(model, optimizer, episodes, GRPOConfig(), tokenizer.pad_token_id,
                              max_grad_norm=None, behaviour_logprobs=behaviour)
        assert metrics["ratio/mean"] == pytest.approx(1.0, abs=1e-4)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1], rtol=1e-4, atol=1e-6)


def test_an_off_policy_update_without_engine_logprobs_says_what_it_needs(tokenizer):
    model = tiny_random_model(tokenizer)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"episode 0: an off-policy update needs the engine's logprob of every policy token .* has none for 6"):
        grpo_update(model, optimizer, _episodes(len(tokenizer)), GRPOConfig(), tokenizer.pad_token_id,
                    behaviour_logprobs=True)
