"""Every figure of two sweeps' summary.json side by side: prints each difference, then ``differences: N``.

Leaves out what differs between two runs of the same sweep by nature: ids, paths, times and
seconds, the code version, MLflow run ids (keys containing one of IGNORED). Exit status 1 when a
figure differs.

    python tools/summary_diff.py runs/before/summary.json runs/after/summary.json
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterator

IGNORED = ("trial_id", "run_id", "path", "dir", "seconds", "time", "created", "code_version", "artifact", "uri")


def leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if not any(word in str(key).lower() for word in IGNORED):
                yield from leaves(item, f"{prefix}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("error: pass two summary.json paths (before, after)", file=sys.stderr)
        return 2
    before, after = (dict(leaves(json.loads(open(p).read()))) for p in argv)
    differences = [k for k in sorted(set(before) | set(after)) if not same(before.get(k, "<absent>"), after.get(k, "<absent>"))]
    for key in differences:
        print(f"{key}: {before.get(key, '<absent>')!r} -> {after.get(key, '<absent>')!r}")
    print(f"compared: {len(set(before) | set(after))} values")
    print(f"differences: {len(differences)}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
