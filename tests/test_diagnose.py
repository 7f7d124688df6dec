"""`agentenv diagnose`: the episode log a rollout run writes, and the report read from it."""

import pytest

from agentenv.cli import main
from agentenv.trainers.evaluation.diagnose import advantages, diagnose


def _episode(step, group, reward, calculator, tokens, cls="calculator", right=False, valid=True):
    return {
        "step": step, "group": group, "id": f"q{group}", "class": cls, "reward": reward,
        "reward_components": {"exact_match": float(right)}, "format_valid": valid, "finish_reason": "answer",
        "turns": 2, "tool_calls": {"search": 1, "calculator": calculator}, "failed_calls": 0,
        "policy_tokens": tokens, "total_tokens": tokens + 100, "answer": "1",
    }


def test_advantages_follow_the_run_estimator():
    assert advantages([1.0, 1.0], "grpo", True) == [0.0, 0.0]
    grpo = advantages([1.0, 0.0, 0.0, 0.0], "grpo", False)
    assert grpo == pytest.approx([0.75, -0.25, -0.25, -0.25])
    rloo = advantages([1.0, 0.0, 0.0, 0.0], "rloo", False)
    assert rloo == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    scaled = advantages([1.0, 0.0, 0.0, 0.0], "grpo", True)
    assert scaled[0] == pytest.approx(0.75 / 0.5, rel=1e-4)  # the sample std of (1, 0, 0, 0) is 0.5


def test_the_report_pairs_tool_users_with_skippers_and_weighs_the_push_by_length():
    # One group: two samples used the calculator (one right, one wrong, both long), two skipped it
    # (both wrong, short). Skipping is paid what failing with the tool is paid.
    records = [
        _episode(1, 0, 1.0, 1, 40, right=True), _episode(1, 0, 0.1, 1, 40),
        _episode(1, 0, 0.1, 0, 10), _episode(1, 0, 0.1, 0, 10),
        # A second class whose group carries no gradient.
        _episode(1, 1, 0.1, 0, 20, cls="single-hop"), _episode(1, 1, 0.1, 0, 20, cls="single-hop"),
    ]
    report = diagnose(records, {"mode": "grpo", "grpo": {"scale_advantages_by_std": False, "loss_agg": "token-mean"}})
    calculator = report["classes"]["calculator"]
    use = calculator["tool_use"]["calculator"]
    assert use["mixed_groups"] == 1
    assert use["reward_with"] == pytest.approx(0.55) and use["reward_without"] == pytest.approx(0.1)
    assert use["reward_difference"] == pytest.approx(0.45) and use["groups_tool_better"] == 1.0
    assert use["outcomes_with"] == {"right": 0.5, "wrong": 0.5, "bad format": 0.0}
    assert use["outcomes_without"]["wrong"] == 1.0
    assert calculator["informative_groups"] == 1.0
    assert report["classes"]["single-hop"]["informative_groups"] == 0.0
    # pass@G: the calculator group holds a right answer, the single-hop group none.
    assert calculator["solved_groups"] == 1.0 and report["classes"]["single-hop"]["solved_groups"] == 0.0
    # Advantages 0.675, -0.225, -0.225, -0.225. Token-mean weighs each by its length (40, 40, 10, 10):
    # the tool side nets 27 − 9 = 18 of the |c| mass 27 + 9 + 2.25 + 2.25 = 40.5; seq-mean-token-mean
    # weighs each sample alike: 0.45 of 1.35.
    push = calculator["push"]
    assert push["token-mean"]["with calculator"] == pytest.approx(18 / 40.5)
    assert push["seq-mean-token-mean"]["with calculator"] == pytest.approx(0.45 / 1.35)
    assert push["token-mean"]["all"] == pytest.approx(13.5 / 40.5)
    # Summed over classes: the single-hop group carries nothing, so the total is the calculator class's.
    assert report["push_by_tool"]["calculator"]["token-mean"]["with"] == pytest.approx(18 / 40.5)
    assert report["push_by_tool"]["calculator"]["token-mean"]["episodes_with"] == 2
    assert report["by_step"] == [{
        "step": 1, "trained_groups": {"calculator": 1, "single-hop": 0},
        "push with calculator": pytest.approx(18 / 40.5), "push with search": pytest.approx(13.5 / 40.5),
    }]
    by_length = report["push_by_length"]
    assert sum(b["episodes"] for b in by_length) == len(records)


def test_dynamic_sampling_trains_only_the_first_b_groups_whose_rewards_differ():
    records = [
        _episode(1, 0, 0.1, 0, 10), _episode(1, 0, 0.1, 0, 10),  # all equal: never trained
        _episode(1, 1, 1.0, 1, 10), _episode(1, 1, 0.1, 0, 10),  # the first informative group
        _episode(1, 2, 1.0, 1, 10), _episode(1, 2, 0.1, 0, 10),  # past B = 1: rolled out, not trained
    ]
    config = {"mode": "grpo", "grpo": {"questions_per_step": 1, "oversample": 2}}
    report = diagnose(records, config)
    assert [r["advantage"] != 0 for r in records] == [False, False, True, True, False, False]
    assert report["by_step"][0]["trained_groups"] == {"calculator": 1}


def test_diagnose_says_what_is_missing(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "no episode log" in capsys.readouterr().err
