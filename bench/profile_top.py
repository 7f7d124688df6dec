"""Where a profiled benchmark worker spent its time, from py-spy's collapsed stacks.

    .venv/bin/python bench/profile_top.py bench/out/profile-ours.txt [--top 25] [--match trainers/]

A collapsed-stack file (``py-spy record --format raw``) has one line per distinct stack,
``frame;frame;...;frame COUNT``. Inclusive share: samples whose stack contains the function
anywhere (each stack counted once per function); self share: samples where it is the innermost
frame. ``--match`` keeps functions whose frame text contains the string.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "name (path/to/file.py:123)" -> "name (file.py)": one entry per function, not per line.
FRAME = re.compile(r"^(?P<name>.*?) \((?P<path>[^():]+)(?::\d+)?\)$")


def function_of(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["path"]
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['name']} ({path})"


def summarise(path: Path) -> tuple[int, Counter, Counter]:
    inclusive: Counter = Counter()
    own: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [function_of(frame) for frame in stack.split(";")]
        for function in set(frames):
            inclusive[function] += samples
        own[frames[-1]] += samples
    return total, inclusive, own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only functions whose frame contains this")
    args = parser.parse_args()
    total, inclusive, own = summarise(args.profile)
    print(f"{total} samples in {args.profile}")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        shown = [(f, n) for f, n in counter.most_common() if args.match in f][: args.top]
        for function, samples in shown:
            print(f"  {samples / total:6.1%}  {function}")


if __name__ == "__main__":
    main()
