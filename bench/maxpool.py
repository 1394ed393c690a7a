"""Forward-only max pooling: torch's nn.MaxPool2d against addd.architectures.MaxPool2d, in one run.

The digits target model (``digits_cnn``, the quick start's M_t; ``--arch`` for another) with
torch's pooling and with ours, the same weights, one torch thread, no gradient (as in every
evaluation and in the decision-based attacks), ``--batch`` images at a time, alternating the two
``--repeats`` times. Prints both medians, whether the logits are identical bit for bit (they
must be), and ends with ``ratio: X`` = torch's seconds / ours (> 1: ours is faster).

    python bench/maxpool.py
    python bench/maxpool.py --arch lenet --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="digits_cnn")
    p.add_argument("--batch", type=int, default=300)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=10, help="forward passes per timed repeat")
    args = p.parse_args()
    import torch

    from addd import architectures

    torch.set_num_threads(1)
    torch.manual_seed(0)
    channels = 3 if args.arch in ("svhn_cnn", "resnet") else 1
    ours = architectures.build_target_model(args.arch, channels=channels, num_classes=10).eval()
    plain = architectures.with_torch_pools(ours)
    x = torch.nn.functional.interpolate(torch.rand(args.batch, channels, 8, 8), size=32)
    seconds = {"torch": [], "ours": []}
    with torch.no_grad():
        identical = torch.equal(ours(x), plain(x))
        for _ in range(args.repeats):
            for label, model in (("torch", plain), ("ours", ours)):
                start = time.perf_counter()
                for _ in range(args.calls):
                    model(x)
                seconds[label].append((time.perf_counter() - start) / args.calls)
    print(f"{args.arch} forward, batch {args.batch}, one thread, no gradient: torch pooling "
          f"{statistics.median(seconds['torch']) * 1e3:.1f} ms, ours {statistics.median(seconds['ours']) * 1e3:.1f} ms")
    print(f"identical logits: {identical}")
    if not identical:
        print("error: the two poolings disagree", file=sys.stderr)
        return 1
    print(f"ratio: {statistics.median(seconds['torch']) / statistics.median(seconds['ours']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
