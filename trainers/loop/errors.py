"""The error a config or a checkpoint raises, and how it quotes the value it refuses.

A leaf module: the config and checkpoint modules both raise these, and the config module imports
the algorithms, one of which (the reward model) reads checkpoints.
"""

from __future__ import annotations

import reprlib
from typing import Any


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names the key."""


# Errors quote the values they refuse: a value may be a list of a hundred thousand items.
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxdict, _BRIEF.maxset = 3, 8, 8, 8, 8
_BRIEF.maxstring = _BRIEF.maxlong = _BRIEF.maxother = 160
MAX_QUOTED_CHARS = 300


def brief(value: Any) -> str:
    """``repr(value)`` cut to at most ``MAX_QUOTED_CHARS`` characters, in time that does not grow
    with the value's size (a string keeps its start, where a path or a name shows)."""
    text = _BRIEF.repr(value) if not isinstance(value, str) else repr(value[:MAX_QUOTED_CHARS])
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 3] + "..."
