"""The README's examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    match = re.search(rf"<!-- example: {marker} -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, f"README.md has no python block after <!-- example: {marker} -->"
    return match.group(1)


def test_new_tool_env_example_runs_verbatim(tokenizer):
    code = readme_block("new-tool-env")
    assert len(code.strip().splitlines()) <= 15
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # the README's own text, run as written
    env = namespace["env"]
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<word_length>agent</word_length>")
    assert env.unwrapped.tokenizer.decode(obs).endswith("<result>\n5\n</result>\n")
    obs, reward, terminated, truncated, info = env.step("<answer>5</answer>")
    assert terminated and reward == 1.0
    assert info["reward_components"] == {
        "research_answer": 1.0, "search_budget_penalty": 0.0, "exact_match": 1.0, "f1": 1.0
    }
