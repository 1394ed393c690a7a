"""Benchmark: an ADD-Defense training step with the online known attack PGDa against one without.

Both train on two known-attack domains, so the networks see the same batch: without, PGDu + PGDt
from cached sets; with, PGDu + PGDa, PGDa made per batch by ``online.steps`` iterations of L∞ PGD
through M_t ∘ G ∘ E (M_t: the dataset's default target architecture, untrained: the cost does not
depend on its weights). Each is timed as seconds per step of one-epoch fits, interleaved, the
median over repeats, so machine noise hits both alike. Expected ratio: about steps + 1.

    python bench/online.py                                   # digits size: width 0.0625, batch 32, steps 5
    python bench/online.py --steps 10 --fraction 0.5 --repeats 5
    python bench/online.py --device cuda --width 1.0 --channels 3 --arch svhn_cnn
Prints ``ratio: X`` last.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from addd.architectures import DEFAULT_ARCH, arch_kwargs_for, build_target_model
from addd.config import DefenseConfig, NetworkConfig, OnlineAttackConfig, TrainConfig
from addd.defense import ADDDefense


def seconds_per_step(known: tuple[str, ...], args: argparse.Namespace, x, y, x_adv, target_model) -> float:
    """Seconds per training step of a one-epoch fit (the epoch's wall time / its steps)."""
    config = DefenseConfig(
        network=NetworkConfig(width=args.width, channels=args.channels),
        train=TrainConfig(epochs=1, batch_size=args.batch_size, device=args.device),
        known_attacks=known,
        online=OnlineAttackConfig(eps=args.eps, steps=args.steps, fraction=args.fraction),
    )
    defense = ADDDefense(config)
    defense.fit(x, y, x_adv, target_model=target_model)  # EpochReport.seconds covers the steps only
    report = defense.history[-1]
    return report.seconds / report.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.0625)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="online PGD iterations per batch")
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--eps", type=float, default=0.15, help="the dataset's PGD eps (digits: 0.15)")
    parser.add_argument("--arch", default=DEFAULT_ARCH["digits"], help="target architecture M_t")
    parser.add_argument("--batches", type=int, default=8, help="steps per timed fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    n = args.batch_size * args.batches
    x = torch.rand(n, args.channels, 32, 32, device=args.device)
    y = torch.randint(0, 10, (n,), device=args.device)
    x_adv = {name: (x + 0.05 * torch.randn_like(x)).clamp(0, 1) for name in ("PGDu", "PGDt")}
    target_model = build_target_model(args.arch, **arch_kwargs_for(args.arch, args.channels, 10)).to(args.device)
    cases = {"cached (PGDu+PGDt)": ("PGDu", "PGDt"), "online (PGDu+PGDa)": ("PGDu", "PGDa")}
    seconds_per_step(cases["online (PGDu+PGDa)"], args, x, y, x_adv, target_model)  # warm-up, not timed
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(args.repeats):
        for label, known in cases.items():
            times[label].append(seconds_per_step(known, args, x, y, x_adv, target_model))
    medians = {label: statistics.median(values) for label, values in times.items()}
    print(f"width {args.width}, channels {args.channels}, batch {args.batch_size}, online steps {args.steps}, "
          f"fraction {args.fraction}, M_t {args.arch}, device {args.device}, torch threads {torch.get_num_threads()}")
    for label, median in medians.items():
        print(f"{label:20s} {1000 * median:8.1f} ms/step  (median of {args.repeats}, {args.batches} steps each)")
    print(f"ratio: {medians['online (PGDu+PGDa)'] / medians['cached (PGDu+PGDt)']:.2f}")


if __name__ == "__main__":
    main()
