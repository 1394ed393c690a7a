"""Benchmark: one ADD-Defense training step vs a plain forward+backward of the same five networks.

The plain baseline runs E, G, C, D_P and D_I once each, forward and backward, on the same
concatenated batch (original + K known attacks) — the least any training step over these
networks must do. The ADD-Defense step adds the alternating discriminator update, the losses
(MMD kernel over the whole batch, prior, confusion, GAN, MSE) and two optimiser steps.
Both are timed interleaved in one run (medians over repeats), so machine noise hits both alike.

    python bench/step.py                 # widths 0.25 (1 channel) and 1.0 (3 channels, Table 4)
    python bench/step.py --width 0.125 --channels 1 --batch-size 64 --repeats 20
    python bench/step.py --device cuda --width 1.0   # on a GPU (times wait for the GPU to finish)
Goal: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from addd.config import DefenseConfig, NetworkConfig, TrainConfig
from addd.defense import ADDDefense


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_forward_backward(defense: ADDDefense, x_all: torch.Tensor) -> None:
    z_mean, z_logvar = defense.encoder(x_all)
    z = z_mean + z_logvar  # use both heads so both get gradients
    restored = defense.generator(z)
    out = (
        restored.mean()
        + defense.classifier(z).mean()
        + defense.perturbation_discriminator(z).mean()
        + defense.image_discriminator(restored).mean()
    )
    defense.zero_grad(set_to_none=True)
    out.backward()


def measure(width: float, channels: int, batch_size: int, known: int, repeats: int,
            device: str = "cpu") -> tuple[float, float]:
    attacks = ("PGDu", "PGDt", "CWu", "CWt", "DDNu", "DDNt")[:known]
    config = DefenseConfig(
        network=NetworkConfig(width=width, channels=channels),
        train=TrainConfig(batch_size=batch_size, device=device),
        known_attacks=attacks,
    )
    dev = torch.device(device)
    defense = ADDDefense(config).to(dev).train()
    optimizers = defense._make_optimizers()  # after .to(): fused Adam wants its params on their device
    x = torch.rand(batch_size, channels, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    adv = [(x + 0.03 * torch.randn_like(x)).clamp(0, 1) for _ in attacks]
    x_all = torch.cat([x, *adv])
    step_times, plain_times = [], []
    for i in range(repeats + 2):  # first two rounds warm up
        _sync(dev)
        t0 = time.perf_counter()
        defense.training_step(optimizers, x, y, adv)
        _sync(dev)
        t1 = time.perf_counter()
        plain_forward_backward(defense, x_all)
        _sync(dev)
        t2 = time.perf_counter()
        if i >= 2:
            step_times.append(t1 - t0)
            plain_times.append(t2 - t1)
    return statistics.median(step_times), statistics.median(plain_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, action="append", help="width factor(s); default 0.25 and 1.0")
    parser.add_argument("--channels", type=int, default=None, help="image channels (default: 1 below width 1, else 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per domain")
    parser.add_argument("--known", type=int, default=2, help="number of known attacks (domains - 1)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, batch {args.batch_size} x {args.known + 1} domains")
    print(f"{'width':>6} {'ch':>3} {'ADD step ms':>12} {'plain f+b ms':>13} {'ratio':>6}")
    ratios = []
    for width in args.width or [0.25, 1.0]:
        channels = args.channels or (1 if width < 1 else 3)
        step, plain = measure(width, channels, args.batch_size, args.known, args.repeats, args.device)
        ratios.append(step / plain)
        print(f"{width:>6} {channels:>3} {step * 1e3:>12.1f} {plain * 1e3:>13.1f} {step / plain:>6.2f}")
    print(f"ratio: {ratios[-1]:.3f}")  # the last (largest) width: ADD step / plain forward+backward (goal <= 1.3)


if __name__ == "__main__":
    main()
