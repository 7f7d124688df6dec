"""The reward model: the Bradley-Terry loss by hand, learning a synthetic preference, the pair file
formats (TRL's text and chat messages, and the rollout pairs' lossless round trip), save and load,
and `agentenv rm train` on a tiny random model."""

import json
import math
import random

import pytest
import torch
import yaml

from agentenv.cli import main
from agentenv.rewards import RewardConfig
from agentenv.trainers.algorithms.reward_model import (
    BradleyTerryConfig,
    PreferencePair,
    TokenPair,
    bradley_terry_loss,
    bradley_terry_step,
    build_reward_model,
    calibration_bins,
    evaluate_pairs,
    load_reward_model,
    pair_token_ids,
    read_preference_pairs,
    save_reward_model,
    tokenize_pairs,
    write_preference_pairs,
)
from agentenv.trainers.loop.build import QuestionOrder
from agentenv.trainers.loop.config import ConfigError, EnvConfig
from agentenv.trainers.loop.reward_model_training import (
    RolloutPairsConfig,
    collect_rollout_pairs,
    load_rm_config,
    split_held_out,
)
from agentenv.trainers.rollout.engines import Completion, per_prompt_limits

# --- the loss ------------------------------------------------------------------------------------


def test_bradley_terry_loss_and_its_gradient_match_a_hand_computation():
    chosen = torch.tensor([1.0], requires_grad=True)
    rejected = torch.tensor([0.5], requires_grad=True)
    margin, lam = 0.2, 0.1
    loss = bradley_terry_loss(chosen, rejected, margin, lam)
    loss.sum().backward()

    delta = 1.0 - 0.5 - 0.2  # r⁺ − r⁻ − m
    sigmoid = 1 / (1 + math.exp(-delta))
    assert loss.item() == pytest.approx(-math.log(sigmoid) + lam * (1.0 + 0.5) ** 2, abs=1e-6)  # 0.779355
    # ∂ℓ/∂r⁺ = −σ(−Δ) + 2λ(r⁺ + r⁻), ∂ℓ/∂r⁻ = σ(−Δ) + 2λ(r⁺ + r⁻)
    assert chosen.grad.item() == pytest.approx(-(1 - sigmoid) + 2 * lam * 1.5, abs=1e-6)  # −0.125558
    assert rejected.grad.item() == pytest.approx((1 - sigmoid) + 2 * lam * 1.5, abs=1e-6)  # 0.725558


def test_without_margin_or_centering_the_loss_is_log_2_at_a_tie_and_depends_only_on_the_gap():
    tie = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([3.0]))
    assert tie.item() == pytest.approx(math.log(2))
    shifted = bradley_terry_loss(torch.tensor([2.0, 102.0]), torch.tensor([1.0, 101.0]))
    assert shifted[0].item() == pytest.approx(shifted[1].item())


class KeepGradients(torch.optim.SGD):
    """An optimizer whose step changes nothing and keeps a copy of the gradients it was given."""

    def step(self, closure=None):
        self.kept = [p.grad.clone() for group in self.param_groups for p in group["params"] if p.grad is not None]


def test_micro_batches_accumulate_to_the_gradient_of_the_whole_step(tokenizer):
    config = load_rm_config(None, ["model.name=tiny-random", "lora.enabled=false", "data.pairs=x.jsonl"])
    pairs = [TokenPair([5, 6, 7, 8][: 2 + i % 3], [9, 10, 11][: 1 + i % 3], 0.1 * i) for i in range(6)]
    kept = []
    for micro in (1, 4, 6):
        model = build_reward_model(config.model, config.lora, tokenizer, seed=0)
        optimizer = KeepGradients(model.parameters(), lr=0.0)
        bradley_terry_step(model, optimizer, pairs, BradleyTerryConfig(), micro_batch_pairs=micro, max_grad_norm=None)
        kept.append(optimizer.kept)
    for other in kept[1:]:
        for a, b in zip(kept[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- learning --------------------------------------------------------------------------------------

WORDS = "river stone cloud lamp table green window paper garden music bread horse silver mountain".split()


def marker_pairs(count: int, seed: int) -> list[PreferencePair]:
    """Chosen and rejected say the same words, but only chosen has the word 'excellent' in it."""
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(5)]
        at = rng.randrange(len(words) + 1)
        chosen = " ".join([*words[:at], "excellent", *words[at:]])
        rejected = " ".join([*words[:at], "ordinary", *words[at:]])
        pairs.append(PreferencePair(prompt=f"Review {seed}-{i}:", chosen=" " + chosen, rejected=" " + rejected))
    return pairs


def test_the_reward_model_learns_to_rank_held_out_pairs_of_a_synthetic_task(tokenizer):
    config = load_rm_config(None, ["model.name=tiny-random", "lora.enabled=false", "data.pairs=x.jsonl", "optim.lr=1e-3"])
    train, _ = tokenize_pairs(marker_pairs(64, seed=1), tokenizer, 0.0, 64)
    held_out, _ = tokenize_pairs(marker_pairs(32, seed=2), tokenizer, 0.0, 64)
    model = build_reward_model(config.model, config.lora, tokenizer, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.optim.lr)
    before = evaluate_pairs(model, held_out, config.loss)
    order = QuestionOrder(len(train), seed=0)
    for _ in range(30):
        bradley_terry_step(model, optimizer, [train[i] for i in order.take(16)], config.loss, micro_batch_pairs=16)
    after = evaluate_pairs(model, held_out, config.loss)
    print(f"held-out pair accuracy {before['pair_accuracy']:.3f} -> {after['pair_accuracy']:.3f}")
    assert after["pair_accuracy"] > 0.9
    assert after["loss"] < before["loss"]


# --- pair files ------------------------------------------------------------------------------------


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_trl_text_pairs_are_read_with_an_explicit_or_an_implicit_prompt(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"chosen": "The sky is blue.", "rejected": "The sky is green.", "margin": 0.5},
    ])
    explicit, implicit = read_preference_pairs(path)
    assert (explicit.prompt, explicit.chosen, explicit.margin) == ("The sky is", " blue.", None)
    assert implicit.prompt is None and implicit.margin == 0.5
    chosen, rejected = pair_token_ids(explicit, tokenizer)
    assert chosen == tokenizer("The sky is blue.")["input_ids"]
    assert rejected == tokenizer("The sky is green.")["input_ids"]
    assert pair_token_ids(implicit, tokenizer)[0] == chosen
    [kept] = tokenize_pairs([implicit], tokenizer, default_margin=0.1, max_tokens=64)[0]
    assert kept.margin == 0.5  # the pair's own margin wins over loss.margin


def test_trl_chat_message_pairs_are_rendered_with_the_chat_template(tmp_path, tokenizer):
    question = [{"role": "user", "content": "What color is the sky?"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": question, "chosen": [{"role": "assistant", "content": "It is blue."}],
         "rejected": [{"role": "assistant", "content": "It is green."}]},
        {"chosen": [*question, {"role": "assistant", "content": "It is blue."}],
         "rejected": [*question, {"role": "assistant", "content": "It is green."}]},
    ])
    explicit, implicit = read_preference_pairs(path)
    expected = tokenizer.apply_chat_template(
        [*question, {"role": "assistant", "content": "It is blue."}], tokenize=True, return_dict=True
    )["input_ids"]
    assert pair_token_ids(explicit, tokenizer)[0] == list(expected)
    assert pair_token_ids(implicit, tokenizer)[0] == list(expected)
    assert "It is green." in tokenizer.decode(pair_token_ids(explicit, tokenizer)[1])


def test_parquet_pairs_are_read_like_jsonl(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": " a", "rejected": " b"}]), tmp_path / "pairs.parquet")
    [pair] = read_preference_pairs(tmp_path / "pairs.parquet")
    assert (pair.prompt, pair.chosen, pair.rejected) == ("p", " a", " b")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "x", "chosen": "a"}', "pairs.jsonl:2: no 'rejected'"),
        ('{"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}', "pairs.jsonl:2: mixes text and chat messages"),
        ('{"chosen": "a", "rejected": "b", "margin": "big"}', "pairs.jsonl:2: 'margin' must be a number"),
        ("not json", "pairs.jsonl:2: not JSON"),
    ],
)
def test_a_bad_pair_is_an_error_naming_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"chosen": "a", "rejected": "b"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_preference_pairs(path)


# --- pairs from rollouts ---------------------------------------------------------------------------


class AlternatingEngine:
    """A scripted policy on the calculator env: the k-th sample of each question answers right when
    k is even and 0 when k is odd, with made-up logprobs (to check they survive the round trip)."""

    def __init__(self, tokenizer, questions):
        self.tokenizer, self.questions, self.seen = tokenizer, questions, {}

    def generate(self, prompts, sampling, max_new_tokens=None):
        completions = []
        for prompt, limit in zip(prompts, per_prompt_limits(prompts, sampling, max_new_tokens), strict=True):
            text = self.tokenizer.decode(prompt)
            question = next(q for q in self.questions if q["question"] in text)
            k = self.seen[question["id"]] = self.seen.get(question["id"], -1) + 1
            answer = question["answers"][0] if k % 2 == 0 else "0"
            ids = self.tokenizer.encode(f"<answer>{answer}</answer>", add_special_tokens=False)[:limit]
            completions.append(Completion(ids, [-0.1234567891 * (t + 1) for t in range(len(ids))], "stop"))
        return completions

    def update_weights(self, model):
        """A script has no weights."""


@pytest.fixture(scope="module")
def rollout_pairs(tokenizer):
    from agentenv.envs import arithmetic_questions

    questions = arithmetic_questions(3, seed=0)  # what Calculator-v0 generates with num_questions 3
    config = RolloutPairsConfig(
        env=EnvConfig(id="agentenv/Calculator-v0", kwargs={"num_questions": 3, "max_turns": 2}),
        reward=RewardConfig(answer="exact_match"),
        samples_per_question=3, batch_size=6, limit=3,
    )
    return collect_rollout_pairs(config, engine=AlternatingEngine(tokenizer, questions), tokenizer=tokenizer)


def test_rollout_pairs_pair_only_samples_of_the_same_question(rollout_pairs):
    pairs, stats = rollout_pairs
    # each question: samples right, wrong, right -> rewards 1, 0, 1 -> two pairs, the right one chosen
    assert stats == {"questions": 3, "episodes": 9, "mean_reward": pytest.approx(6 / 9), "pairs": 6, "questions_with_pairs": 3}
    for pair in pairs:
        assert (pair.chosen_reward, pair.rejected_reward) == (1.0, 0.0)
        chosen, rejected = pair.chosen_trajectory, pair.rejected_trajectory
        assert chosen.token_ids[: chosen.prompt_length] == rejected.token_ids[: rejected.prompt_length]
        assert pair.question["question"] in pair.prompt
        assert f"<answer>{pair.question['answers'][0]}</answer>" in pair.chosen and "<answer>0</answer>" in pair.rejected
    assert len({p.question["id"] for p in pairs}) == 3


def test_rollout_pairs_round_trip_losslessly_through_jsonl(rollout_pairs, tmp_path, tokenizer):
    pairs, _ = rollout_pairs
    path = write_preference_pairs(tmp_path / "pairs.jsonl", pairs)
    first = json.loads(path.read_text().splitlines()[0])
    assert {"prompt", "chosen", "rejected", "question", "chosen_reward", "chosen_segments"} <= set(first)
    back = read_preference_pairs(path)
    assert back == pairs  # trajectories, segments, logprobs, rewards and the question, exactly
    assert pair_token_ids(back[0], tokenizer) == (pairs[0].chosen_trajectory.token_ids, pairs[0].rejected_trajectory.token_ids)
    write_preference_pairs(tmp_path / "again.jsonl", back)
    assert (tmp_path / "again.jsonl").read_text() == path.read_text()


def test_the_held_out_split_keeps_each_question_on_one_side(rollout_pairs):
    pairs, _ = rollout_pairs
    train, held_out = split_held_out(pairs, fraction=0.34, seed=0)
    assert len(held_out) == 2 and len(train) == 4
    assert not {p.group for p in train} & {p.group for p in held_out}


# --- the model on disk, calibration ----------------------------------------------------------------


def test_a_saved_reward_model_loads_and_scores_as_before(tmp_path, tokenizer):
    config = load_rm_config(None, ["model.name=tiny-random", "lora.r=4", "data.pairs=x.jsonl"])
    model = build_reward_model(config.model, config.lora, tokenizer, seed=0)
    with torch.no_grad():
        for name, param in model.lm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)  # a LoRA update to merge
    sequences = [[1, 2, 3, 4], [5, 6, 7], list(range(10, 30))]
    before = model.score(sequences, batch_size=2)
    save_reward_model(model, tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "reward_model.json").read_text())["format"] == "agentenv.reward_model"
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.score(sequences) == pytest.approx(before, abs=1e-5)
    assert loaded.score([sequences[0]]) == pytest.approx(before[:1], abs=1e-5)  # padding changes nothing


def test_calibration_bins_put_both_orientations_of_each_pair_in_the_reliability_diagram():
    bins, ece = calibration_bins([0.95, 0.95, 0.75, 0.75])
    by_bin = {b["low"]: b for b in bins}
    assert by_bin[0.9]["observed"] == 1.0 and by_bin[0.0]["observed"] == 0.0
    assert by_bin[0.7]["count"] == 2 and by_bin[0.7]["observed"] == 1.0
    # |0.95 − 1|·2 + |0.05 − 0|·2 + |0.75 − 1|·2 + |0.25 − 0|·2, over 8 points
    assert ece == pytest.approx((0.05 * 4 + 0.25 * 4) / 8)


# --- the command -----------------------------------------------------------------------------------


def write_rm_config(tmp_path, pairs_file, **overrides):
    config = {
        "model": {"name": "tiny-random"},
        "lora": {"enabled": False},
        "data": {"pairs": str(pairs_file), "held_out_fraction": 0.25},
        "train": {"steps": 6, "pairs_per_step": 8, "micro_batch_pairs": 8},
        "optim": {"lr": 1.0e-3},
        **overrides,
    }
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_rm_train_writes_the_model_the_calibration_plot_and_a_summary(tmp_path, capsys):
    from agentenv.trainers.algorithms.reward_model import pair_to_record

    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", [pair_to_record(p) for p in marker_pairs(24, seed=3)])
    out = tmp_path / "rm-run"
    assert main(["rm", "train", "--config", str(write_rm_config(tmp_path, pairs_file)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out pairs: 6, pair accuracy" in printed and f"model: {out / 'model'}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_pairs"] == 18 and summary["held_out"]["pairs"] == 6
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    # The diagram's content, drawn from the held-out evaluation it plotted: the diagonal, then a point per bin.
    from agentenv.trainers.loop.reward_model_training import draw_calibration

    held, bins = summary["held_out"], summary["held_out"]["calibration"]
    (ax,) = draw_calibration(held).axes
    assert ax.get_title() == (f"held-out pairs (n = 6): accuracy {held['pair_accuracy']:.2f}, "
                              f"ECE {held['expected_calibration_error']:.2f}")
    diagonal, model = ax.get_lines()
    assert (diagonal.get_label(), model.get_label()) == ("calibrated", "reward model")
    assert list(model.get_xdata()) == [b["predicted"] for b in bins]
    assert list(model.get_ydata()) == [b["observed"] for b in bins]
    assert [text.get_text() for text in ax.texts] == [str(b["count"]) for b in bins]  # pairs per bin
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    scores = load_reward_model(out).score([[1, 2, 3], [4, 5]])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)


def test_rm_print_config_shows_every_key_with_the_overrides(tmp_path, capsys):
    argv = ["rm", "train", "--set", "data.pairs=p.jsonl", "--set", "loss.margin=0.5", "--print-config"]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["loss"] == {"margin": 0.5, "center_coefficient": 0.01}
    assert printed["model"]["name"] == "embedded" and printed["data"]["rollouts"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "data: give data.pairs"),
        (["data.pairs=p.jsonl", "loss.marginn=1"], "unknown key 'loss.marginn'; did you mean 'loss.margin'?"),
        (["data.pairs=nope.jsonl"], "data.pairs: nope.jsonl: no such pairs file"),
        (["data.rollouts.samples_per_question=1"], "data.rollouts.samples_per_question: 1 is too small"),
    ],
)
def test_rm_config_mistakes_are_one_line_naming_the_key(overrides, message, capsys):
    argv = ["rm", "train", "--set", "model.name=tiny-random"]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_load_rm_config_rejects_a_bad_choice():
    with pytest.raises(ConfigError, match="optim.schedule: 'linear' is not allowed"):
        load_rm_config(None, ["data.pairs=p.jsonl", "optim.schedule=linear"])


def test_the_shipped_reward_model_config_loads():
    from pathlib import Path

    config = load_rm_config(Path(__file__).resolve().parent.parent / "configs" / "rm" / "rm-geo.yaml")
    assert config.data.rollouts.env.id == "agentenv/SearchQA-v0" and config.lora.enabled


def test_rollouts_of_a_policy_that_never_differs_give_a_clear_error_and_an_empty_pairs_file(tmp_path, tiny_model_dir, capsys):
    rollouts = {
        "policy": str(tiny_model_dir), "engine": "transformers", "limit": 2, "samples_per_question": 2,
        "env": {"id": "agentenv/Calculator-v0", "kwargs": {"num_questions": 4, "max_turns": 1, "max_turn_tokens": 6}},
    }
    config = write_rm_config(tmp_path, "unused.jsonl", data={"rollouts": rollouts})
    out = tmp_path / "rm-run"
    assert main(["rm", "train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.rollouts: 4 episodes gave no pairs" in err  # a random model never answers: all rewards 0
    assert (out / "pairs.jsonl").read_text() == ""
    assert main(["rm", "pairs", "--config", str(config), "--out", str(tmp_path / "pairs-only")]) == 0
    assert "0 pairs from 4 episodes of 2 questions" in capsys.readouterr().out
