"""Benchmark: one ADD-Defense training step vs a plain forward+backward of the same five networks.

The plain baseline runs E, G, C, D_P and D_I once each, forward and backward, on the same
concatenated batch (original + K known attacks) — the least any training step over these
networks must do. The ADD-Defense step adds the alternating discriminator update, the losses
(MMD kernel over the whole batch, prior, confusion, GAN, MSE) and two optimiser steps.
Both are timed interleaved in one run (medians over repeats), so machine noise hits both alike.
The ADD step's time includes fetching its batch the way ``fit`` does (``addd.training.take_batch``):
sliced from host tensors and copied to the device, or, with ``--resident`` (``train.resident``),
indexed in tensors already on the device; the ``fetch ms`` column shows that part alone (on CPU it
is only the slice). ``--autocast bf16`` (``train.autocast``) runs the step's network forwards in
bfloat16 autocast, and the plain baseline's too, so the ratio compares like with like; the step's
time over an fp32 plain pass is printed beside it.

    python bench/step.py                 # widths 0.25 (1 channel) and 1.0 (3 channels, Table 4)
    python bench/step.py --width 0.125 --channels 1 --batch-size 64 --repeats 20
    python bench/step.py --device cuda --width 1.0   # on a GPU (times wait for the GPU to finish)
    python bench/step.py --device cuda --width 1.0 --autocast bf16 --resident   # the GPU path's options
Goal: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from addd.config import AUTOCAST_MODES, DefenseConfig, NetworkConfig, TrainConfig
from addd.defense import ADDDefense
from addd.training import take_batch

DATASET_BATCHES = 8  # the host (or resident) training set the batches are drawn from, in batches


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_forward_backward(defense: ADDDefense, x_all: torch.Tensor, autocast: str = "none") -> None:
    """E, G, C, D_P, D_I forward once each (under bf16 autocast if asked), one backward."""
    bf16 = torch.autocast(x_all.device.type, dtype=torch.bfloat16) if autocast == "bf16" else contextlib.nullcontext()
    with bf16:
        z_mean, z_logvar = defense.encoder(x_all)
        z = z_mean + z_logvar  # use both heads so both get gradients
        restored = defense.generator(z)
        out = (
            restored.float().mean()
            + defense.classifier(z).float().mean()
            + defense.perturbation_discriminator(z).float().mean()
            + defense.image_discriminator(restored).float().mean()
        )
    defense.zero_grad(set_to_none=True)
    out.backward()


def _training_data(batch_size: int, channels: int, known: int, device: torch.device, resident: bool):
    """x, y and ``known`` paired noisy sets of DATASET_BATCHES batches, on the host (on ``device`` if resident)."""
    n = batch_size * DATASET_BATCHES
    x = torch.rand(n, channels, 32, 32)
    data = [x, torch.randint(0, 10, (n,)), *((x + 0.03 * torch.randn_like(x)).clamp(0, 1) for _ in range(known))]
    return [t.to(device) for t in data] if resident else data


def measure(width: float, channels: int, batch_size: int, known: int, repeats: int, device: str = "cpu",
            autocast: str = "none", resident: bool = False) -> dict[str, float]:
    """Median seconds of: the batch fetch, the ADD step after it, and the plain forward+backward at
    the step's precision and at fp32."""
    attacks = ("PGDu", "PGDt", "CWu", "CWt", "DDNu", "DDNt")[:known]
    config = DefenseConfig(
        network=NetworkConfig(width=width, channels=channels),
        train=TrainConfig(batch_size=batch_size, device=device, autocast=autocast, resident=resident),
        known_attacks=attacks,
    )
    dev = torch.device(device)
    defense = ADDDefense(config).to(dev).train()
    optimizers = defense._make_optimizers()  # after .to(): fused Adam wants its params on their device
    data = _training_data(batch_size, channels, known, dev, resident)
    order = torch.randperm(len(data[0])).to(data[0].device)  # as run_epochs: one shuffle, on the data's device
    times: dict[str, list[float]] = {"fetch": [], "step": [], "plain": [], "plain_fp32": []}
    for i in range(repeats + 2):  # first two rounds warm up
        begin = (i % DATASET_BATCHES) * batch_size
        t0 = time.perf_counter()
        x, y, *adv = take_batch(data, order[begin: begin + batch_size], None if resident else dev)
        _sync(dev)
        t1 = time.perf_counter()
        defense.training_step(optimizers, x, y, adv)
        _sync(dev)
        t2 = time.perf_counter()
        x_all = torch.cat([x, *adv])
        _sync(dev)
        t3 = time.perf_counter()
        plain_forward_backward(defense, x_all, autocast)
        _sync(dev)
        t4 = time.perf_counter()
        plain_fp32 = t4 - t3
        if autocast != "none":  # the fp32 plain pass too, for the step's time over it
            plain_forward_backward(defense, x_all)
            _sync(dev)
            plain_fp32 = time.perf_counter() - t4
        if i >= 2:
            for name, seconds in zip(times, (t1 - t0, t2 - t1, t4 - t3, plain_fp32)):
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, action="append", help="width factor(s); default 0.25 and 1.0")
    parser.add_argument("--channels", type=int, default=None, help="image channels (default: 1 below width 1, else 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per domain")
    parser.add_argument("--known", type=int, default=2, help="number of known attacks (domains - 1)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--autocast", default="none", choices=AUTOCAST_MODES,
                        help="train.autocast: bf16 runs the network forwards in bfloat16 autocast (default none)")
    parser.add_argument("--resident", action="store_true",
                        help="train.resident: the training tensors live on the device, batches indexed there")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, batch {args.batch_size} x {args.known + 1} domains, "
          f"autocast {args.autocast}, {'resident' if args.resident else 'host'} training data")
    print(f"{'width':>6} {'ch':>3} {'fetch ms':>9} {'ADD step ms':>12} {'plain f+b ms':>13} {'ratio':>6} "
          f"{'plain fp32 ms':>14} {'vs fp32':>8}")
    ratios = []
    for width in args.width or [0.25, 1.0]:
        channels = args.channels or (1 if width < 1 else 3)
        t = measure(width, channels, args.batch_size, args.known, args.repeats, args.device, args.autocast,
                    args.resident)
        step = t["fetch"] + t["step"]  # what fit pays per batch
        ratios.append(step / t["plain"])
        print(f"{width:>6} {channels:>3} {t['fetch'] * 1e3:>9.2f} {t['step'] * 1e3:>12.1f} {t['plain'] * 1e3:>13.1f} "
              f"{ratios[-1]:>6.2f} {t['plain_fp32'] * 1e3:>14.1f} {step / t['plain_fp32']:>8.2f}")
    # the last (largest) width: (fetch + ADD step) / plain forward+backward at the step's precision (goal <= 1.3)
    print(f"ratio: {ratios[-1]:.3f}")


if __name__ == "__main__":
    main()
