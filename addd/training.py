"""The one training harness of addd: used by ADDDefense.fit and by the baselines' fit.

A model supplies only its step: ``step(batch) -> {loss name: value}``, where ``batch`` is the
list of its training tensors (x, y, then any paired adversarial sets) sliced to one shuffled
mini-batch and moved to the training device (or, ``resident``, moved there once and indexed there:
``train.resident``). :func:`run_epochs` owns everything else:

- the input checks (:func:`check_training_data`): shapes, dtype, [0, 1] range, finite values,
  one adversarial set per known attack paired with x, each failure one error that says what to fix;
- the epoch loop: a seeded shuffle per epoch, the last partial batch dropped, the mean of each loss
  over the epoch's steps, one :class:`EpochReport` per epoch appended to ``model.history`` and
  handed to ``callback(report, model)`` (return False to stop);
- the per-step finite check: the step calls :func:`check_finite` on its loss terms before each
  backward pass; :func:`run_epochs` adds the epoch and step to the NonFiniteLossError;
- resuming: :class:`TrainingRun` holds the optimisers and random generators of one fit, saves them
  as a :class:`TrainingState` and loads one back, so a resumed fit equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from addd.errors import AdddError
from addd.storage import StorageError, load_tensors, save_tensors

log = logging.getLogger(__name__)

TRAINING_STATE_FORMAT = "addd-training-state/1"


class NonFiniteLossError(AdddError):
    """A training loss became NaN or infinite; training stopped (the message says what to lower)."""


@dataclass(frozen=True)
class EpochReport:
    """What one epoch of training produced; handed to the ``fit`` callback."""

    epoch: int  # 1-based
    losses: dict[str, float]  # mean of each loss term over the epoch's steps
    seconds: float  # wall time of the epoch's training steps
    steps: int = 0


EpochCallback = Callable[[EpochReport, Any], "bool | None"]
Step = Callable[[list[torch.Tensor]], Mapping[str, float]]


# --------------------------------------------------------------------------------------------
# Input and loss checks
# --------------------------------------------------------------------------------------------


def check_training_data(
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: Mapping[str, torch.Tensor],
    needed: Sequence[str],
    error: type[AdddError],
) -> None:
    """Raise ``error`` unless x is float32 (N, C, H, W) in [0, 1] with N >= 2, y is (N,), and
    ``x_adv`` holds, for every name in ``needed``, a finite set in [0, 1] paired with x."""
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.dtype == torch.float32):
        raise error(f"x must be float32 (N, C, H, W), got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise error(f"y must have shape ({x.shape[0]},), got {tuple(getattr(y, 'shape', ()))}")
    if x.shape[0] < 2:
        raise error(f"need at least 2 training examples, got {x.shape[0]}")
    missing = [name for name in needed if name not in x_adv]
    if missing:
        raise error(f"x_adv lacks the known attack(s) {missing}; pass examples for each of {list(needed)}")
    for name in needed:
        if x_adv[name].shape != x.shape:
            raise error(f"x_adv[{name!r}] has shape {tuple(x_adv[name].shape)}, expected {tuple(x.shape)} (paired with x)")
    for name, tensor in [("x", x), *((f"x_adv[{a!r}]", x_adv[a]) for a in needed)]:
        if not bool(torch.isfinite(tensor).all()):
            raise error(f"{name} contains NaN or inf values; regenerate or clean the data")
        low, high = float(tensor.min()), float(tensor.max())
        if low < 0 or high > 1:
            raise error(f"{name} must be images in [0, 1], got values in [{low:.3g}, {high:.3g}]; rescale the data")


def check_finite(terms: Mapping[str, torch.Tensor | float]) -> None:
    """Raise NonFiniteLossError naming every NaN/inf tensor in ``terms`` (call before backward)."""
    bad = [name for name, v in terms.items() if isinstance(v, torch.Tensor) and not torch.isfinite(v).all()]
    if bad:
        values = ", ".join(f"{name}={float(terms[name].detach())}" for name in bad)
        raise NonFiniteLossError(f"non-finite loss ({values}); lower the learning rate or the loss weights (e.g. theta_mse)")


# --------------------------------------------------------------------------------------------
# Resumable state
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """What ``fit`` needs, beyond the weights, to continue as if it had never stopped: the Adam
    optimisers' state (moments, step counts, hyper-parameters) and the shuffle and noise RNGs.
    Flat tensors (``optim.<optimiser name>.<param index>.<name>``, ``rng.<name>``) plus JSON
    metadata, so it is saved with safetensors (no pickle)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict

    def save(self, path: str | Path) -> Path:
        save_tensors(path, self.tensors, {"format": TRAINING_STATE_FORMAT, **self.metadata})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "TrainingState":
        tensors, metadata = load_tensors(path)
        if metadata.pop("format", None) != TRAINING_STATE_FORMAT:
            raise StorageError(f"{path} is not an ADD-Defense training state (expected {TRAINING_STATE_FORMAT!r})")
        return cls(tensors, metadata)

    def optimizer(self, name: str) -> dict | None:
        """The ``torch.optim`` state dict of optimiser ``name`` (e.g. ``main``), None if it had none."""
        meta = self.metadata["optimizers"].get(name)
        if meta is None:
            return None
        state: dict[int, dict] = {int(i): dict(values) for i, values in meta["scalars"].items()}
        prefix = f"optim.{name}."
        for key, tensor in self.tensors.items():
            if key.startswith(prefix):
                index, _, field_name = key[len(prefix):].partition(".")
                state.setdefault(int(index), {})[field_name] = tensor
        return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class TrainingRun:
    """The optimisers (a name -> optimiser, None where a model has none) and the random
    generators (name -> generator; ``shuffle`` orders the epochs) of one fit."""

    optimizers: dict[str, torch.optim.Optimizer | None]
    generators: dict[str, torch.Generator]

    def resume(self, state: TrainingState) -> None:
        """Load ``state`` (of an earlier fit of the same config) into these optimisers and RNGs."""
        for name, optimizer in self.optimizers.items():
            saved = state.optimizer(name)
            if (optimizer is None) != (saved is None):
                raise StorageError(f"training state has {'no ' if saved is None else ''}{name} optimiser but this "
                                   f"model {'has' if optimizer is not None else 'has none'}; was it saved by another config?")
            if optimizer is not None:
                optimizer.load_state_dict(saved)
        for name, generator in self.generators.items():
            generator.set_state(state.tensors[f"rng.{name}"])

    def state(self) -> TrainingState:
        """The optimisers' and generators' state now, for ``fit(..., resume_state=...)``."""
        tensors = {f"rng.{name}": generator.get_state() for name, generator in self.generators.items()}
        meta: dict[str, dict | None] = {}
        for name, optimizer in self.optimizers.items():
            meta[name] = None if optimizer is None else _optimizer_metadata(name, optimizer, tensors)
        return TrainingState(tensors, {"optimizers": meta})


def _optimizer_metadata(name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict:
    """Put the optimiser's tensors into ``tensors``; return its param groups and scalars as JSON."""
    state_dict = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, values in state_dict["state"].items():
        scalars[str(index)] = {}
        for field_name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{index}.{field_name}"] = value
            else:
                scalars[str(index)][field_name] = value
    return json.loads(json.dumps({"param_groups": state_dict["param_groups"], "scalars": scalars}))  # as saved


# --------------------------------------------------------------------------------------------
# The epoch loop
# --------------------------------------------------------------------------------------------


def run_epochs(
    model: Any,
    data: Sequence[torch.Tensor],
    step: Step,
    *,
    run: TrainingRun,
    batch_size: int,
    epochs: int,
    device: torch.device,
    callback: EpochCallback | None = None,
    resident: bool = False,
) -> list[EpochReport]:
    """Train ``model`` (which has a ``history`` list) for up to ``epochs`` epochs over ``data``
    (tensors of one length N, e.g. x, y, x_adv...). Each epoch shuffles with
    ``run.generators["shuffle"]`` and calls ``step`` on every full batch of ``min(batch_size, N)``.
    ``resident`` (``train.resident``): move ``data`` to ``device`` once, here, and index every batch
    there (no host-to-device copy per batch); otherwise each batch is sliced on the host and moved.
    Returns this call's reports (also appended to ``model.history``)."""
    n, batch = len(data[0]), min(batch_size, len(data[0]))
    if resident:
        data = [tensor.to(device) for tensor in data]
    reports: list[EpochReport] = []
    for epoch in range(1, epochs + 1):
        report = _epoch(epoch, data, step, run.generators["shuffle"], n, batch, None if resident else device)
        reports.append(report)
        model.history.append(report)
        log.info("%s epoch %d: %s (%.1fs)", type(model).__name__, epoch, _format(report.losses), report.seconds)
        if callback is not None and callback(report, model) is False:
            break
    return reports


def _epoch(epoch: int, data: Sequence[torch.Tensor], step: Step, shuffle: torch.Generator, n: int, batch: int,
           device: torch.device | None) -> EpochReport:
    """One epoch; ``device`` None: ``data`` is resident on the training device (the shuffle, drawn on the
    host as always, is moved there once and batches are indexed in place)."""
    start, sums, steps = time.perf_counter(), {}, 0
    order = torch.randperm(n, generator=shuffle)
    if device is None:
        order = order.to(data[0].device)
    for begin in range(0, n - batch + 1, batch):  # drop the last partial batch
        idx = order[begin : begin + batch]
        try:
            values = step(take_batch(data, idx, device))
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"epoch {epoch}, step {steps + 1}: {exc}") from None
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        steps += 1
    return EpochReport(epoch, {k: v / steps for k, v in sums.items()}, time.perf_counter() - start, steps)


def take_batch(data: Sequence[torch.Tensor], idx: torch.Tensor, device: torch.device | None) -> list[torch.Tensor]:
    """The rows ``idx`` of every tensor of ``data``: sliced and moved to ``device``, or, ``device`` None
    (resident data, ``idx`` on its device), indexed where the tensors already are."""
    return [tensor[idx] for tensor in data] if device is None else [tensor[idx].to(device) for tensor in data]


def _format(values: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items() if math.isfinite(v))
