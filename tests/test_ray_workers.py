"""Rollout workers on Ray: the same episodes as one process, weights in sync, deaths survived.

A real local Ray (``ray.init(num_cpus=2)``), real actors, the tiny random model of
configs/tiny-test.yaml with a LoRA adapter and the transformers engine; workers are killed with
``ray.kill``, nothing is mocked.
"""

import threading
from pathlib import Path

import pytest
import torch

from agentenv.trainers.loop.build import load_policy, make_envs
from agentenv.trainers.loop.config import load_config
from agentenv.trainers.rollout.engines import SamplingConfig, TransformersEngine
from agentenv.trainers.rollout.rollout import rollout

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

TINY_TEST = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"
B, G = 3, 2  # three questions on two workers: shards of two questions and one


@pytest.fixture(scope="module")
def config():
    # A nudge after a turn without a tool call keeps random text going: episodes of two turns.
    return load_config(TINY_TEST, ["engine.workers=2", "engine.worker_num_cpus=0.5", "lora.enabled=true", "lora.r=4", "env.kwargs.on_no_call=nudge",
                                    "env.kwargs.max_total_tokens=512"])


@pytest.fixture(scope="module")
def trainer(config, tokenizer):
    """The training process's side: the LoRA policy, B x G environments, B questions."""
    policy = load_policy(config, tokenizer)
    envs = make_envs(config, tokenizer, B * G)
    return policy.model, envs, envs[0].questions[:B]


@pytest.fixture(scope="module")
def workers(config, trainer):
    from agentenv.trainers.rollout.workers import RolloutWorkers

    ray.init(num_cpus=2, include_dashboard=False)
    pool = RolloutWorkers(config)
    pool.update_weights(trainer[0])
    yield pool
    pool.close()
    ray.shutdown()


def in_process(trainer, tokenizer, sampling):
    """The rollout the trainer runs without workers: its own model, its own environments."""
    model, envs, questions = trainer
    return rollout(TransformersEngine(model, tokenizer), envs, questions, G, sampling)


def assert_same_episodes(batch, reference):
    assert len(batch.episodes) == len(reference.episodes) == B * G
    for episode, expected in zip(batch.episodes, reference.episodes, strict=True):
        assert episode.group == expected.group
        assert episode.question == expected.question
        assert episode.trajectory.token_ids == expected.trajectory.token_ids
        assert episode.trajectory.policy_mask == expected.trajectory.policy_mask
        # A worker's matmuls sum in another order than the trainer's (another thread count): a
        # log-prob of -10.7 came out 1.6e-4 apart on an AMD EPYC, 1.5e-5 of its size.
        assert episode.trajectory.policy_logprobs == pytest.approx(expected.trajectory.policy_logprobs, rel=1e-4, abs=1e-4)
        assert episode.reward == expected.reward
        assert episode.reward_components == expected.reward_components


def sampling(seed):
    return SamplingConfig(temperature=1.0, max_new_tokens=12, seed=seed)


def test_two_workers_sample_the_episodes_of_the_in_process_rollout(workers, trainer, tokenizer):
    batch = workers.rollout(trainer[2], G, sampling(seed=11))
    assert [e.group for e in batch.episodes] == [0, 0, 1, 1, 2, 2]  # renumbered to the whole batch
    assert_same_episodes(batch, in_process(trainer, tokenizer, sampling(seed=11)))
    assert batch.generated_tokens == sum(e.trajectory.count("policy") for e in batch.episodes)
    assert max(e.num_turns for e in batch.episodes) == 2
    first, second = batch.episodes[:2]  # one question, two samples: two random streams
    assert first.trajectory.token_ids != second.trajectory.token_ids


def test_after_a_sync_every_worker_scores_like_the_trainer(workers, trainer):
    model = trainer[0]
    with torch.no_grad():  # a LoRA update: the adapter's B matrices start at zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    workers.update_weights(model)

    prompt = trainer[1][0].reset(options=dict(trainer[2][0]))[0].tolist()
    for actor in workers.actors:
        [completion] = ray.get(actor.generate.remote([prompt], SamplingConfig(temperature=1.0, max_new_tokens=8, seed=5)))
        ids = torch.tensor([prompt + completion.token_ids])
        with torch.no_grad():
            new = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1].float(), -1)
            with model.disable_adapter():
                old = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1].float(), -1)
        sampled = torch.tensor(completion.token_ids)[:, None]
        assert completion.logprobs == pytest.approx(new.gather(-1, sampled)[:, 0].tolist(), abs=1e-4)
        assert (old.gather(-1, sampled)[:, 0] - torch.tensor(completion.logprobs)).abs().max() > 1e-2


def test_a_prefetched_rollout_is_sampled_by_the_weights_the_workers_held_when_it_started(workers, trainer, tokenizer):
    model = trainer[0]
    expected = in_process(trainer, tokenizer, sampling(seed=21))  # the weights the workers hold now
    workers.prefetch(trainer[2], G, sampling(seed=21))
    with torch.no_grad():  # an update while the workers sample
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))))
    workers.update_weights(model)  # queues behind the rollout on every actor

    batch = workers.rollout(trainer[2], G, sampling(seed=21))  # collects the prefetched one
    assert batch.behaviour_lag == 1
    assert_same_episodes(batch, expected)
    fresh = workers.rollout(trainer[2], G, sampling(seed=21))  # sampled anew, on the synced weights
    assert fresh.behaviour_lag == 0
    assert_same_episodes(fresh, in_process(trainer, tokenizer, sampling(seed=21)))


def test_training_one_step_off_the_policy_trains_each_batch_one_update_late(workers, tmp_path):
    from agentenv.trainers.loop.metrics import read_jsonl
    from agentenv.trainers.loop.train import train

    # A random model earns no reward here, so no gradient: weight decay moves the weights anyway.
    overrides = ["max_steps=3", "env.kwargs.on_no_call=nudge", "env.kwargs.max_total_tokens=512", "optim.lr=0.05",
                 "optim.weight_decay=1.0", "optim.warmup_steps=0", "engine.workers=1", "engine.worker_num_cpus=0.5"]
    on_policy = train(load_config(TINY_TEST, overrides), tmp_path / "on-policy")
    train(load_config(TINY_TEST, [*overrides, "rollout.off_policy_steps=1"]), tmp_path / "off-policy")

    steps = {r["step"]: r for r in read_jsonl(tmp_path / "off-policy" / "metrics.jsonl")}
    aligned = {r["step"]: r for r in read_jsonl(tmp_path / "on-policy" / "metrics.jsonl")}
    assert [steps[s]["rollout/behaviour_lag"] for s in (1, 2, 3)] == [0.0, 1.0, 1.0]
    assert [steps[s]["data/question_ids"] for s in (1, 2, 3)] == [aligned[s]["data/question_ids"] for s in (1, 2, 3)]
    # Step 1 is the on-policy step itself; later batches were sampled by weights one update older
    # than the trainer's, which the engine-vs-trainer gap shows (on-policy it is numerics only).
    assert steps[1]["loss"] == pytest.approx(aligned[1]["loss"], abs=1e-6)
    assert steps[3]["logprob_gap/engine_vs_trainer"] > 10 * on_policy["logprob_gap/engine_vs_trainer"]
    assert steps[3]["workers/restarts"] == 0


def test_a_worker_killed_mid_rollout_is_replaced_and_each_episode_returns_once(workers, trainer, tokenizer):
    ray.get(workers.actors[1].set_generate_delay.remote(2.0))  # so the kill lands mid-rollout
    restarts = workers.restarts
    killer = threading.Timer(1.0, ray.kill, [workers.actors[1]])
    killer.start()
    batch = workers.rollout(trainer[2], G, sampling(seed=12))
    killer.join()

    assert workers.restarts == restarts + 1
    # Exactly the episodes of one process, on the newest weights: the replacement was re-synced.
    assert_same_episodes(batch, in_process(trainer, tokenizer, sampling(seed=12)))


def test_a_worker_that_dies_past_its_restarts_fails_the_call_naming_it(workers, trainer):
    from agentenv.trainers.rollout.workers import WorkerError

    workers.max_restarts = 0
    ray.get(workers.actors[1].set_generate_delay.remote(2.0))
    killer = threading.Timer(1.0, ray.kill, [workers.actors[1]])
    killer.start()
    with pytest.raises(WorkerError, match=r"rollout worker 1 of 2 died 1 time\(s\).*worker_restarts: 0.*killed"):
        workers.rollout(trainer[2], G, sampling(seed=13))
    killer.join()


def test_training_on_two_workers_computes_what_it_computes_in_one_process(workers, tmp_path):
    from agentenv.trainers.loop.train import train

    # The workers of this module keep 1 of Ray's 2 CPUs; these two take half a CPU each.
    overrides = ["max_steps=2", "env.kwargs.on_no_call=nudge", "env.kwargs.max_total_tokens=512"]
    alone = train(load_config(TINY_TEST, overrides), tmp_path / "in-process")
    pooled = train(load_config(TINY_TEST, [*overrides, "engine.workers=2", "engine.worker_num_cpus=0.5"]), tmp_path / "workers")

    for key in ("reward/mean", "episode/response_tokens", "episode/turns", "loss"):
        assert pooled[key] == pytest.approx(alone[key], abs=1e-6), key
    assert pooled["time/sync_s"] > 0


def test_weights_travel_as_arrays_and_come_back_bit_for_bit_in_bfloat16(tokenizer):
    from agentenv.models import tiny_random_model
    from agentenv.trainers.rollout.workers import RolloutWorker, weights_payload

    model = tiny_random_model(tokenizer).to(torch.bfloat16)
    payload = weights_payload(model)
    assert {dtype for _, _, dtype in payload["weights"]} == {"bfloat16"}
    received = TransformersEngine(tiny_random_model(tokenizer).to(torch.bfloat16), tokenizer)
    with torch.no_grad():
        for parameter in received.model.parameters():
            parameter.zero_()
    RolloutWorker.load_weights(type("Worker", (), {"engine": received})(), payload)  # the worker's method, no actor
    for (name, sent), got in zip(model.state_dict().items(), received.model.state_dict().values(), strict=True):
        assert torch.equal(sent, got), name
