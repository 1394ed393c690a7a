"""The Ray Tune trainable: train one ADD-Defense from its flat config, report every epoch.

A trial's config is ``{"phase": "search" | "final", "variant": <ablation>, <flat DefenseConfig
keys>...}``; everything else a trial needs (data, adversarial sets, the target model) arrives once
through Ray's object store as a :class:`TrialContext`. Ray itself is reached only through
``sweeps._ray``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from addd.advcache import AdvSet
from addd.config import DefenseConfig, ablation, from_flat_dict
from addd.evaluate import evaluate

log = logging.getLogger(__name__)

OBJECTIVE = "objective"  # = val/worst.unknown: what Optuna maximises and ASHA compares
DEFENSE_FILE = "defense.safetensors"
STATE_FILE = "trial_state.json"
_META_KEYS = ("phase", "variant")


@dataclass(frozen=True)
class SplitSets:
    """One split's clean examples and their adversarial sets (oblivious attacks on M_t)."""

    x: torch.Tensor  # (N, C, 32, 32) in [0, 1]
    y: torch.Tensor  # (N,)
    adv: Mapping[str, AdvSet]  # attack -> set paired with x


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares; put in the object store once by the driver."""

    train: SplitSets  # adv: the known-attack sets trials may train on
    val: SplitSets
    test: SplitSets
    target_model: nn.Module
    holdout_attacks: tuple[str, ...]
    threads: int  # torch threads per trial (= CPUs given to it)
    events_path: str | None  # local JSON-lines log of trial starts/epochs/ends (tests, bench)


def split_config(config: Mapping[str, Any]) -> tuple[str, str, DefenseConfig]:
    """(phase, variant, DefenseConfig) of a trial config; the variant's ablation is applied."""
    flat = {k: v for k, v in config.items() if k not in _META_KEYS}
    variant = config["variant"]
    return config["phase"], variant, ablation(from_flat_dict(flat), variant)


def evaluate_split(defense: nn.Module, ctx: TrialContext, split: str, known: tuple[str, ...]) -> dict[str, float]:
    """addd.evaluate's metrics on ``split``, named ``{split}/<metric>`` (``val/worst.unknown``, ...)."""
    data: SplitSets = getattr(ctx, split)
    report = evaluate(defense, ctx.target_model, data.x, data.y, data.adv, known_attacks=known, holdout=ctx.holdout_attacks)
    return {f"{split}/{k}": v for k, v in report.to_metrics().items()}


def _event(ctx: TrialContext, trial_id: str, event: str, **fields: Any) -> None:
    """Append one line to the events log (O_APPEND lines are atomic on a local disk)."""
    if ctx.events_path:
        line = json.dumps({"trial_id": trial_id, "event": event, "time": time.time(), "pid": os.getpid(), **fields})
        with open(ctx.events_path, "a") as fh:
            fh.write(line + "\n")


def train_defense(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable. Search trials report the validation objective every epoch;
    final trials report losses every epoch, then validation and test figures at the end."""
    from addd.defense import ADDDefense, load_defense
    from sweeps import _ray

    torch.set_num_threads(max(1, ctx.threads))
    phase, variant, cfg = split_config(config)
    trial_id = _ray.trial_id()
    epochs = cfg.train.epochs
    device = torch.device(cfg.train.device)
    ctx.target_model.to(device).eval()

    start_epoch = 0
    with _ray.latest_checkpoint_dir() as ckpt:  # restored trial: continue where it stopped
        if ckpt is not None:
            defense = load_defense(Path(ckpt) / DEFENSE_FILE, device=cfg.train.device)
            start_epoch = json.loads((Path(ckpt) / STATE_FILE).read_text())["epoch"]
        else:
            defense = ADDDefense(cfg)
    _event(ctx, trial_id, "start", phase=phase, variant=variant, start_epoch=start_epoch)
    if start_epoch >= epochs:
        _event(ctx, trial_id, "end", epoch=start_epoch)
        return

    def on_epoch(report, model: ADDDefense) -> None:
        epoch = start_epoch + report.epoch
        metrics: dict[str, float] = {"epoch": epoch, "epoch_seconds": report.seconds}
        metrics.update({f"loss/{k}": v for k, v in report.losses.items()})
        eval_start = time.perf_counter()
        if phase == "search" or epoch == epochs:
            metrics.update(evaluate_split(model, ctx, "val", cfg.known_attacks))
            metrics[OBJECTIVE] = metrics["val/worst.unknown"]
        if phase == "final" and epoch == epochs:
            metrics.update(evaluate_split(model, ctx, "test", cfg.known_attacks))
        metrics["eval_seconds"] = time.perf_counter() - eval_start
        # compute = what the trial must do whatever runs it; checkpointing and reporting are overhead
        _event(ctx, trial_id, "epoch", epoch=epoch, compute_seconds=report.seconds + metrics["eval_seconds"])
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / DEFENSE_FILE, extra_metadata={"epoch": epoch, "variant": variant})
            (Path(tmp) / STATE_FILE).write_text(json.dumps({"epoch": epoch, "metrics": metrics}))
            _ray.report(metrics, checkpoint_dir=tmp)

    x_adv = {name: ctx.train.adv[name].x_adv for name in cfg.known_attacks}
    defense.fit(ctx.train.x, ctx.train.y, x_adv, callback=on_epoch, epochs=epochs - start_epoch)
    _event(ctx, trial_id, "end", epoch=epochs)
