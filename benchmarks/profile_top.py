"""Top frames of a ``py-spy record --format raw`` profile (collapsed stacks), as text.

::

    benchmarks/.venvs/profile/bin/py-spy record -r 250 -f raw -o prof.txt -- \\
        .venv/bin/python benchmarks/systems/taskforge_system.py enqueue-single --jobs 5000
    python benchmarks/profile_top.py prof.txt --within enqueue_single

``--within NAME`` keeps only the samples whose stack holds a frame named ``NAME`` (the timed
part, without start-up and imports). Prints the functions that hold the most samples
inclusively (on the stack) and by themselves (at the top of the stack).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys

#: ``function (path/to/file.py:line)`` -> ``function (file.py)``
FRAME = re.compile(r"^(?P<name>.*?) \((?P<path>[^:()]*)(?::\d+)?\)$")


def _short(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["path"]
    for marker in ("site-packages/", "wt-bench/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['name']} ({path})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=pathlib.Path)
    p.add_argument("--within", help="only samples with a frame of this function name")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)

    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        if args.within and not any(f.startswith(args.within + " ") for f in frames):
            continue
        count = int(count_text)
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples" + (f" within {args.within}" if args.within else ""))
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        for frame, count in counter.most_common(args.top):
            print(f"{100 * count / total:6.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
