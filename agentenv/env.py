"""``ToolEnv``: a multi-turn Gymnasium environment whose actions are generated tokens with tool calls.

One episode answers one question::

    obs, info = env.reset(options={"question": "Who ...?", "answers": ["..."]})
    while True:
        action = policy(obs)                 # token ids the policy generated for one turn
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break

``obs`` is always the whole context as token ids (prompt, every policy turn, every tool output), so
a policy continues from exactly the tokens it was given. ``info["trajectory"]`` holds the same ids as
tagged segments; the loss mask (``info["policy_mask"]``) is built from the tags.

Rollout drivers that run many environments at once call ``step_batch(envs, actions)``: it parses
every turn, sends all calls to one tool in a single batched call (one BM25 query matrix, one HTTP
request), then finishes every step. ``env.step`` is ``step_batch`` with one environment.

What a policy writes, and what a tool does, cannot break a rollout: a turn that does not parse
and a tool that raises are error observations of that call, and the token budgets hold whatever
the turn (``ToolEnv``'s ``max_*`` arguments). Only the caller's own mistakes raise (a finished
episode, a token id outside the vocabulary), and they raise before any environment of the batch
has changed.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agentenv.parsing import ParsedTurn, ToolCall, ToolCallParser, make_parser
from agentenv.parsing import format_answer as default_answer_format
from agentenv.rewards import EpisodeOutcome, Reward, RewardConfig
from agentenv.tools.base import Tool, ToolOutput
from agentenv.trajectory import Trajectory

FINISH_REASONS = ("answer", "untagged_answer", "max_turns", "max_tokens", "no_tool_call")


@dataclass
class _Turn:
    token_ids: list[int]
    logprobs: list[float] | None
    parsed: ParsedTurn
    # Tokens cut from the end of an action longer than the turn's budget (``max_new_tokens``).
    truncated_tokens: int = 0
    runnable: list[ToolCall] = field(default_factory=list)
    # The turn ran into its token budget: cut by the environment, or stopped by the engine at the
    # budget without reaching a stop string (its text may end mid-word).
    cut: bool = False
    # The tool turn after it was shortened to fit max_observation_tokens or the room left.
    observation_cut: bool = False
    # Searches refused because the episode's search budget (max_searches) was spent, by id().
    over_budget: set[int] = field(default_factory=set)
    # The policy closed its turn with the end-of-turn token itself, so the tool turn must not.
    closed: bool = False
    # {"tool", "arguments", "ok", "unavailable", "output"} per call the policy wrote: what the
    # failed-call counts and process rewards are read from.
    calls: list[dict[str, Any]] = field(default_factory=list)


class ToolEnv(gym.Env):
    """A question-answering episode with tools.

    Args:
        tools: the tools the policy may call (``Tool`` objects; a list or a name → tool mapping).
        tokenizer: a Hugging Face tokenizer, or a model name/path to load one from
            (``"embedded"`` is SmolLM2-135M-Instruct).
        parser: the tool-call syntax, ``"tags"`` (ReSearch), ``"search-r1"``, ``"json"``, or an object.
        reward: a ``Reward``, or a ``RewardConfig``; default ReSearch answer reward + search budget.
        questions: records ``{"question", "answers", ...}`` that ``reset()`` samples from when no
            question is passed in ``options``, or a question file (any format
            ``agentenv.corpora.load_questions`` reads) or a shipped set (``"geo:train"``,
            ``"zipcodes:dev"``, a mix ``"geo:train+zipcodes:train"``: ``load_question_set``).
        system_prompt: replaces the generated instructions (the tool list is still rendered).
        max_turns: policy turns before the episode is truncated.
        max_total_tokens: context length (prompt + turns + tool output); the episode ends
            (``max_tokens``) when it is reached, and nothing is appended past it.
        max_turn_tokens: the most tokens the policy may generate in one turn. A longer action is
            cut to ``max_new_tokens`` (the turn's budget, the smaller of this and the room left),
            as a generation engine would have stopped it; ``info["truncated_action_tokens"]``
            says how many tokens were cut.
        max_observation_tokens: the most tokens of one tool turn, its wrapping included. When the
            outputs do not fit (this, or the room left in the context), short ones are kept
            whole and the long ones share the rest, each cut with " …".
        max_calls_per_turn: calls beyond this in one turn get an error instead of running.
        on_no_call: a turn with neither a tool call nor an answer gets a ``"nudge"`` (the
            default: an observation restating the format, and the episode goes on), ``"end"``s the
            episode (truncated, finish reason ``no_tool_call``), or is taken as the ``"answer"``
            (terminated, finish reason ``untagged_answer``, format invalid) — how one-turn baselines
            are scored on models that ignore the answer tags.
        max_nudges: nudges per episode; the next turn without a call or an answer ends it as
            ``no_tool_call``, as does one on the last turn (a reminder would have no turn to act on).
        max_searches: the most calls to tools that return passages (``Tool.returns_passages``) one
            episode may make; a call past it is not run and reads "the search budget is spent",
            and counts as a failed call. None: no budget. ``agentenv eval --search-budgets`` sets it
            to measure EM against searches.

    Why a capped nudge by default: for RL a turn of prose is a recoverable mistake. Ending the
    episode there scores the whole group's attempt at the format as 0 with nothing to learn from
    the turns after it; Search-R1 answers such a turn with a reminder of the format and goes on.
    The cap (1) keeps a policy that has stopped calling tools from spending every remaining turn
    and token of the rollout on prose. A nudged turn is not a format error (thinking aloud is
    allowed); every turn still counts against ``max_turns``.

    What counts against the format (``format_valid`` False, so the ReSearch answer reward is 0):
    no ``<answer>``, a malformed turn (unclosed tag, text after the answer, a call beside the
    answer), and every failed call — an unknown tool, arguments that do not fit, a call over
    ``max_calls_per_turn``, or one the tool refused (``1/0``, an empty query). A tool that is down
    (``ToolUnavailable``: the retrieval server did not answer) is the infrastructure's failure, not
    the policy's: it is counted in ``failed_tool_calls`` and shown to the policy, but leaves the
    format valid, so a dead server does not teach the policy to stop searching.

    ``step`` returns ``obs, reward, terminated, truncated, info``:
        obs: int64 array, the whole context (prompt, turns and tool output so far).
        reward: 0.0 until the episode ends, then the trajectory reward.
        terminated: the policy gave an answer.
        truncated: out of turns, out of tokens, or (``on_no_call="end"``) a turn without a call.
        info: ``trajectory``, ``token_ids``, ``policy_mask``, ``tool_calls`` (per tool),
            ``failed_tool_calls``, ``num_turns``, ``turns`` (per policy turn, its ``calls``: tool,
            arguments, ok, unavailable, output, passages, passage_ids — what process rewards judge), ``answer``, ``format_valid``,
            ``finish_reason`` (None while running), ``reward_components`` (once finished),
            ``truncated_action_tokens`` (tokens cut from this step's action; 0 when it fit),
            ``answer_cut`` (the answer was read from a turn that ran into its token budget; each
            entry of ``turns`` says whether its turn was ``cut`` and its tool output
            ``observation_cut``), ``passage_tools`` (the tools that return passages).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        tools: Sequence[Tool] | Mapping[str, Tool],
        tokenizer: Any = "embedded",
        parser: str | ToolCallParser = "tags",
        reward: Reward | RewardConfig | None = None,
        questions: Sequence[Mapping[str, Any]] | str | os.PathLike | None = None,
        system_prompt: str | None = None,
        max_turns: int = 4,
        max_total_tokens: int = 2048,
        max_turn_tokens: int = 256,
        max_observation_tokens: int = 512,
        max_calls_per_turn: int = 2,
        on_no_call: str = "nudge",
        max_nudges: int = 1,
        max_searches: int | None = None,
        render_mode: str | None = None,
    ):
        if isinstance(tokenizer, str | os.PathLike):
            from agentenv.models import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.tools: dict[str, Tool] = dict(tools) if isinstance(tools, Mapping) else {t.name: t for t in tools}
        self.parser = make_parser(parser)
        reward = reward if reward is not None else RewardConfig()
        self.reward_fn = reward.build() if isinstance(reward, RewardConfig) else reward
        if isinstance(questions, str | os.PathLike):
            from agentenv.corpora import load_question_set

            questions = load_question_set(str(questions))
        self.questions = list(questions) if questions is not None else None
        if on_no_call not in ("end", "nudge", "answer"):
            raise ValueError(f"on_no_call must be 'end', 'nudge' or 'answer', got {on_no_call!r}")
        for name, value in (("max_turns", max_turns), ("max_total_tokens", max_total_tokens),
                            ("max_turn_tokens", max_turn_tokens), ("max_observation_tokens", max_observation_tokens),
                            ("max_calls_per_turn", max_calls_per_turn)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens
        self.max_turn_tokens = max_turn_tokens
        self.max_observation_tokens = max_observation_tokens
        self.max_calls_per_turn = max_calls_per_turn
        self.on_no_call = on_no_call
        if max_nudges < 0:
            raise ValueError(f"max_nudges must be at least 0, got {max_nudges}")
        self.max_nudges = max_nudges
        if max_searches is not None and max_searches < 0:
            raise ValueError(f"max_searches must be at least 0 or None, got {max_searches}")
        self.max_searches = max_searches
        self.render_mode = render_mode
        self.system_prompt = self._build_system_prompt(system_prompt)
        self._tool_turn_wrapper = self._chat_tool_turn() if self.parser.results_in_tool_turn else None

        vocab = spaces.Discrete(len(tokenizer))
        self.observation_space = spaces.Sequence(vocab, stack=True)
        self.action_space = spaces.Sequence(vocab, stack=True)
        self.trajectory = Trajectory()
        self._question: dict[str, Any] | None = None
        self._pending: _Turn | None = None
        self._done = True

    # --- the Gymnasium API -------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode on ``options["question"]``/``options["answers"]``, or on a question
        sampled from ``questions`` (``options["index"]`` picks one)."""
        super().reset(seed=seed)
        self._question = self._pick_question(options or {})
        self.trajectory = Trajectory()
        self.trajectory.append("prompt", self._encode(self._render_prompt(self._question["question"])))
        self._turns: list[_Turn] = []
        self._tool_calls: Counter[str] = Counter()
        self._nudges = 0
        self._answer: str | None = None
        self._pending = None
        self._done = False
        return self._observation(), self._info(finish_reason=None)

    def step(self, action):
        """One policy turn: token ids (or text), then its tool calls and their output."""
        return step_batch([self], [action])[0]

    # --- the oracle that SFT imitates ---------------------------------------------------------------

    def oracle_calls(self, question: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The tool calls an oracle makes before it answers ``question`` (the SFT warm start
        imitates them): ``(tool name, arguments)`` pairs. By default the question's own
        ``oracle_calls`` records, ``[{"name": ..., "arguments": {...}}]``, if it has any; an
        environment that knows how its tools answer its questions overrides this."""
        return [(call["name"], dict(call.get("arguments", {}))) for call in question.get("oracle_calls", [])]

    def oracle_actions(self, question: Mapping[str, Any]) -> list[str]:
        """The turns an oracle plays, in this environment's call syntax: its calls (the last
        ``max_turns − 1`` of them, so that the answer fits), then the first gold answer, each ended
        with the end-of-turn token where the parser's turns end there (``turn_ends_at_eos``). A
        parser of your own without ``format_call``/``format_answer`` gets the ``<answer>`` tags and
        no calls."""
        format_call = getattr(self.parser, "format_call", None)
        calls = [
            format_call(self.tools[name], arguments)
            for name, arguments in self.oracle_calls(question)
            if name in self.tools and format_call is not None
        ]
        answer = question.get("answers", question.get("golden_answers"))
        answer = answer if isinstance(answer, str) else answer[0]
        tool_turns = calls[-(self.max_turns - 1) :] if self.max_turns > 1 else []
        format_answer = getattr(self.parser, "format_answer", None) or default_answer_format
        turns = [*tool_turns, format_answer(answer)]
        if getattr(self.parser, "turn_ends_at_eos", False):
            turns = [turn + self.tokenizer.eos_token for turn in turns]
        return turns

    def main_argument_call(self, tool_name: str, value: Any) -> tuple[str, dict[str, Any]]:
        """``(tool_name, {its main argument: value})``: a call with one argument, for ``oracle_calls``."""
        return tool_name, {self.tools[tool_name].main_argument: value}

    def render(self):
        if self.render_mode == "ansi":
            return self.tokenizer.decode(self.trajectory.token_ids)
        return None

    # --- the two halves of a step, for batched tool calls across environments -----------------

    @property
    def max_new_tokens(self) -> int:
        """How many tokens the policy may generate in its next turn."""
        return max(0, min(self.max_turn_tokens, self.max_total_tokens - len(self.trajectory)))

    @property
    def stop_strings(self) -> list[str]:
        """Strings at which generation of a turn should stop (kept in the output)."""
        return self.parser.stop_strings(self.tools)

    def begin_step(self, action, logprobs: Sequence[float] | None = None) -> list[ToolCall]:
        """Record the policy's turn and parse it; return the calls that should run."""
        return self._begin(self._read_turn(action, logprobs))

    def _read_turn(self, action, logprobs: Sequence[float] | None) -> _Turn:
        """The policy's turn, checked, cut to its budget and parsed; the environment is unchanged,
        so a batch can check every turn before it changes any environment."""
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        if self._pending is not None:
            raise RuntimeError("begin_step() called twice without end_step()")
        token_ids = self._action_ids(action)
        if logprobs is not None:
            logprobs = [float(x) for x in logprobs]
            if len(logprobs) != len(token_ids):
                raise ValueError(f"{len(logprobs)} logprobs for {len(token_ids)} tokens in a policy turn")
        budget = self.max_new_tokens
        truncated = max(0, len(token_ids) - budget)
        token_ids = token_ids[:budget]
        logprobs = None if logprobs is None else logprobs[:budget]
        closed = bool(token_ids) and token_ids[-1] == self.tokenizer.eos_token_id
        # The end-of-turn token is the turn's frame, not its text: an answer followed by it is
        # well formed.
        text = self.tokenizer.decode(token_ids[:-1] if closed else token_ids, skip_special_tokens=False)
        stopped = closed or any(text.endswith(stop) for stop in self.stop_strings)
        cut = truncated > 0 or (len(token_ids) >= budget and not stopped)
        try:
            parsed = self.parser.parse(text, self.tools)
        except Exception as error:  # noqa: BLE001 - a parser of one's own must not end the rollout
            message = _short(f"the turn could not be parsed: {type(error).__name__}: {error}")
            parsed = ParsedTurn(tool_calls=[ToolCall("?", None, message)])
        runnable = [call for call in parsed.tool_calls if call.error is None][: self.max_calls_per_turn]
        over_budget = set()
        if self.max_searches is not None:
            left = self.max_searches - sum(self._tool_calls[name] for name in self.passage_tools)
            for call in runnable:
                if call.name in self.passage_tools:
                    if left <= 0:
                        over_budget.add(id(call))
                    left -= 1
            runnable = [call for call in runnable if id(call) not in over_budget]
        return _Turn(token_ids, logprobs, parsed, truncated, runnable, cut=cut, over_budget=over_budget, closed=closed)

    @property
    def passage_tools(self) -> list[str]:
        """The names of the tools that return passages: the searches ``max_searches`` counts."""
        return [name for name, tool in self.tools.items() if getattr(tool, "returns_passages", False)]

    def _begin(self, turn: _Turn) -> list[ToolCall]:
        self.trajectory.append("policy", turn.token_ids, turn.logprobs)
        self._pending = turn
        return list(turn.runnable)

    def end_step(self, outputs: Sequence[ToolOutput]):
        """Append the tool output for the calls ``begin_step`` returned; finish the step."""
        turn, self._pending = self._pending, None
        if turn is None:
            raise RuntimeError("end_step() without begin_step()")
        if len(outputs) != len(turn.runnable):
            raise ValueError(f"{len(outputs)} outputs for {len(turn.runnable)} tool calls")
        self._turns.append(turn)
        parsed = turn.parsed

        if parsed.answer is not None:
            self._answer = parsed.answer
            return self._finish("answer", terminated=True)

        observations = self._observations_for(turn, list(outputs))
        if not observations:
            if self.on_no_call == "answer":
                text = self.tokenizer.decode(self.trajectory.segments[-1].token_ids, skip_special_tokens=True)
                self._answer = text.strip()
                return self._finish("untagged_answer", terminated=True)
            # A reminder needs a turn to act on: on the last one, the episode ends here.
            last_turn = len(self._turns) >= self.max_turns
            if self.on_no_call == "end" or self._nudges >= self.max_nudges or last_turn:
                return self._finish("no_tool_call", terminated=False)
            self._nudges += 1
            observations = ["No tool call or answer found. " + self.parser.instructions(self.tools)]
        if self._room() > 0:
            turn.observation_cut = self._append_tool_output(observations, turn.closed)

        if len(self._turns) >= self.max_turns:
            return self._finish("max_turns", terminated=False)
        if self.max_new_tokens <= 0:
            return self._finish("max_tokens", terminated=False)
        return self._observation(), 0.0, False, False, self._info(finish_reason=None)

    # --- helpers -------------------------------------------------------------------------------

    def _observations_for(self, turn: _Turn, outputs: list[ToolOutput]) -> list[str]:
        """One observation per call, in the order the policy wrote them."""
        results = iter(outputs)
        runnable = {id(call) for call in turn.runnable}
        observations: list[str] = []
        for call in turn.parsed.tool_calls:
            ok, unavailable, passage_ids = False, False, ()
            if call.error is not None:
                observations.append(f"Error: {call.error}")
            elif id(call) in runnable:
                output = next(results)
                ok, unavailable, passage_ids = output.ok, output.unavailable, output.passage_ids
                self._tool_calls[call.name] += 1
                observations.append(output.text)
            elif id(call) in turn.over_budget:
                observations.append(f"Error: the search budget of this episode ({self.max_searches} searches) is spent; "
                                    "answer with what you have found.")
            else:
                observations.append(f"Error: at most {self.max_calls_per_turn} tool calls per turn; this one was not run.")
            tool = self.tools.get(call.name)
            turn.calls.append({"tool": call.name, "arguments": call.arguments, "ok": ok, "unavailable": unavailable,
                               "output": observations[-1], "passages": bool(getattr(tool, "returns_passages", False)),
                               "passage_ids": list(passage_ids)})
        return observations

    def _room(self) -> int:
        return self.max_total_tokens - len(self.trajectory)

    def _append_tool_output(self, observations: list[str], closed: bool) -> bool:
        """The tool turn, in at most ``max_observation_tokens`` and the room left in the context;
        True when an output had to be shortened to fit. ``closed``: the policy's turn ended with
        its own end-of-turn token, which the tool turn then does not repeat."""
        limit = min(self.max_observation_tokens, self._room())
        outputs = [self._encode(text) for text in observations]
        room = limit - len(self._encode(self._tool_text([""] * len(observations), closed)))
        # Tokens merge differently across the joins, so the sum of the parts is only an estimate:
        # measure the whole, give back what it overshot, and as a last resort cut the ids.
        for _ in range(3):
            shares = _fair_shares([len(ids) for ids in outputs], room)
            clipped = [self._clip(*args) for args in zip(observations, outputs, shares, strict=True)]
            ids = self._encode(self._tool_text(clipped, closed))
            if len(ids) <= limit:
                break
            room -= len(ids) - limit
        self.trajectory.append("tool", ids[:limit])
        return len(ids) > limit or any(share < len(output) for share, output in zip(shares, outputs, strict=True))

    def _tool_text(self, outputs: list[str], closed: bool) -> str:
        text = self.parser.format_results(outputs)
        if self._tool_turn_wrapper is not None:
            before, after = self._tool_turn_wrapper
            if closed:
                before = before.removeprefix(self.tokenizer.eos_token)
            text = before + text + after
        return text

    def _clip(self, text: str, ids: list[int], max_tokens: int) -> str:
        if len(ids) <= max_tokens:
            return text
        marker = " …"
        keep = max_tokens - len(self._encode(marker))
        return self.tokenizer.decode(ids[:keep]) + marker if keep > 0 else ""

    def _finish(self, finish_reason: str, terminated: bool):
        self._done = True
        outcome = EpisodeOutcome(
            answer=self._answer,
            gold_answers=tuple(self._question["answers"]),
            tool_calls=dict(self._tool_calls),
            failed_tool_calls=self._failed_calls(),
            format_valid=self._format_valid(finish_reason),
            finish_reason=finish_reason,
        )
        reward, components = self.reward_fn(outcome)
        info = self._info(finish_reason=finish_reason)
        info["reward_components"] = components
        return self._observation(), float(reward), terminated, not terminated, info

    def _format_valid(self, finish_reason: str) -> bool:
        return (
            finish_reason == "answer"
            and self._failed_calls(count_unavailable=False) == 0
            and all(turn.parsed.is_well_formed for turn in self._turns)
        )

    def _failed_calls(self, count_unavailable: bool = True) -> int:
        """Failed calls of the episode so far; without the ones a tool that was down failed."""
        return sum(
            not call["ok"] and (count_unavailable or not call["unavailable"])
            for turn in self._turns
            for call in turn.calls
        )

    def _observation(self) -> np.ndarray:
        return np.asarray(self.trajectory.token_ids, dtype=np.int64)

    def _info(self, finish_reason: str | None) -> dict[str, Any]:
        return {
            # Snapshots: callers keep infos, and the live objects change on the next step.
            "trajectory": Trajectory(list(self.trajectory.segments)),
            "token_ids": self.trajectory.token_ids,
            "policy_mask": self.trajectory.policy_mask,
            "question": dict(self._question),
            "tool_calls": dict(self._tool_calls),
            "failed_tool_calls": self._failed_calls(),
            "num_turns": len(self._turns),
            "turns": [
                {"calls": list(turn.calls), "cut": turn.cut, "observation_cut": turn.observation_cut}
                for turn in self._turns
            ],
            "answer": self._answer,
            "format_valid": self._format_valid(finish_reason) if finish_reason else False,
            "finish_reason": finish_reason,
            "truncated_action_tokens": self._turns[-1].truncated_tokens if self._turns else 0,
            # The answer was read from a turn that ran into its token budget: it may be cut short.
            "answer_cut": finish_reason in ("answer", "untagged_answer") and self._turns[-1].cut,
            "passage_tools": sorted(self.passage_tools),
        }

    def _action_ids(self, action) -> list[int]:
        if isinstance(action, str):
            return self._encode(action)
        ids = np.asarray(action).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"an action is token ids (integers) or text, got an array of {ids.dtype}")
        ids = ids.astype(np.int64).tolist()
        bad = [t for t in ids if not 0 <= t < len(self.tokenizer)]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside the vocabulary of {len(self.tokenizer)}")
        return ids

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _pick_question(self, options: dict[str, Any]) -> dict[str, Any]:
        if "question" in options:
            question = dict(options)
        elif self.questions:
            index = options.get("index")
            if index is None:
                index = int(self.np_random.integers(len(self.questions)))
            question = dict(self.questions[index])
        else:
            raise ValueError(
                "reset() needs options={'question': ..., 'answers': [...]} "
                "or an environment created with questions=[...]"
            )
        answers = question.get("answers", question.get("golden_answers"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(question.get("question"), str) or not answers:
            raise ValueError(f"a question needs a 'question' string and non-empty 'answers', got {question!r}")
        question["answers"] = [str(a) for a in answers]
        return question

    # --- prompt rendering ------------------------------------------------------------------------

    def _build_system_prompt(self, system_prompt: str | None) -> str:
        prompt = system_prompt or self.parser.instructions(self.tools)
        if self.parser.results_in_tool_turn and not self._template_renders_tools():
            # Templates such as SmolLM2's ignore `tools=`: show the schemas in the system prompt.
            import json

            schemas = "\n".join(json.dumps(tool.schema) for tool in self.tools.values())
            prompt += f"\nAvailable tools (JSON schema):\n{schemas}"
        return prompt

    def _template_renders_tools(self) -> bool:
        messages = [{"role": "user", "content": "x"}]
        schemas = [tool.schema for tool in self.tools.values()]
        with_tools = self.tokenizer.apply_chat_template(messages, tools=schemas, tokenize=False)
        return with_tools != self.tokenizer.apply_chat_template(messages, tokenize=False)

    def _render_prompt(self, question: str) -> str:
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]
        tools = [t.schema for t in self.tools.values()] if self.parser.results_in_tool_turn else None
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )

    def _chat_tool_turn(self) -> tuple[str, str]:
        """The template's text around a tool message, found by rendering with placeholders."""
        assistant, output = "\x00ASSISTANT\x00", "\x00TOOL\x00"
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": assistant}]
        rendered = self.tokenizer.apply_chat_template(
            [*messages, {"role": "tool", "content": output}], tokenize=False, add_generation_prompt=True
        )
        after_assistant = rendered.split(assistant, 1)[1]
        before, after = after_assistant.split(output, 1)
        return before, after


def step_batch(envs: Sequence[ToolEnv], actions: Sequence[Any], logprobs: Sequence[Any] | None = None):
    """Step many environments; each tool receives all of this turn's calls in one batch.

    Every turn is checked and every call run before any environment changes, so a bad action (a
    finished episode, an id outside the vocabulary), or an interrupt inside a tool, raises with
    every environment as it was. A tool's exceptions are its calls' error observations, and every
    environment finishes its step."""
    envs = [getattr(env, "unwrapped", env) for env in envs]
    if len({id(env) for env in envs}) != len(envs):
        raise ValueError("an environment appears twice in one step_batch")
    logprobs = [None] * len(envs) if logprobs is None else logprobs
    turns = [env._read_turn(action, lp) for env, action, lp in zip(envs, actions, logprobs, strict=True)]
    outputs = _run_calls(envs, [turn.runnable for turn in turns])
    # Finish every step even if one raises (a reward function of one's own), then raise the first.
    results, failure = [], None
    for env, turn, out in zip(envs, turns, outputs, strict=True):
        env._begin(turn)
        try:
            results.append(env.end_step(out))
        except Exception as error:  # noqa: BLE001 - re-raised below, once every step is finished
            failure = failure or error
    if failure is not None:
        raise failure
    return results


def _run_calls(envs: list[ToolEnv], pending: list[list[ToolCall]]) -> list[list[ToolOutput]]:
    """One output per call; the calls to one tool (the object, not its name: environments may
    carry different tools) go in one batch."""
    outputs: list[list[ToolOutput | None]] = [[None] * len(calls) for calls in pending]
    batches: dict[int, list[tuple[int, int, ToolCall]]] = defaultdict(list)
    tools: dict[int, Tool] = {}
    for i, calls in enumerate(pending):
        for j, call in enumerate(calls):
            tool = envs[i].tools.get(call.name)
            if tool is None:  # only a parser of one's own lets such a call through
                outputs[i][j] = ToolOutput(f"Error: there is no tool {call.name!r}", ok=False)
                continue
            tools[id(tool)] = tool
            batches[id(tool)].append((i, j, call))
    for key, items in batches.items():
        results = _run_batch(tools[key], [call.arguments for _, _, call in items])
        for (i, j, _), result in zip(items, results, strict=True):
            outputs[i][j] = result
    return outputs


def _run_batch(tool: Tool, calls: list[dict[str, Any]]) -> list[ToolOutput]:
    """``tool.run_batch``, which must not raise, made sure not to: a tool of one's own that raises
    or answers with the wrong number of results fails its own calls, not the batch."""
    try:
        results = list(tool.run_batch(calls))
        if len(results) != len(calls):
            raise RuntimeError(f"run_batch returned {len(results)} outputs for {len(calls)} calls")
        return [result if isinstance(result, ToolOutput) else ToolOutput(str(result)) for result in results]
    except Exception as error:  # noqa: BLE001 - a tool bug must not crash the rollout
        message = _short(f"Error ({getattr(tool, 'name', 'tool')}): {type(error).__name__}: {error}")
        return [ToolOutput(message, ok=False)] * len(calls)


def _fair_shares(lengths: list[int], total: int) -> list[int]:
    """Split ``total`` tokens between outputs of these lengths: the short ones are kept whole and
    the long ones share what is left equally, so one long passage does not crowd out a short
    calculator result."""
    shares = [0] * len(lengths)
    left, count = max(0, total), len(lengths)
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        shares[i] = min(lengths[i], left // count)
        left -= shares[i]
        count -= 1
    return shares


def _short(message: str, max_chars: int = 300) -> str:
    return message if len(message) <= max_chars else message[:max_chars] + "…"
