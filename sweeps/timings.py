"""timings.json's breakdown of a finished sweep's trial phase and study, from what the run left.

- ``search`` / ``final``: trials and compute seconds (training epochs plus evaluations) per
  phase, summed from the events log (local Ray only; absent on a cluster);
- ``finals``: the sweep's final trials: their final evaluation's seconds (``eval_seconds`` of the
  last report) and seconds per adaptive attack and for the curve, summed over finals;
- ``study``: the study's finals (``finals/*/metrics.json``): train and evaluate seconds and the
  same per-attack seconds, summed.

The per-attack names are ``sweeps.trial.SECONDS_PREFIX`` metrics: ``adaptive.pgd`` (CE and margin
runs together), ``adaptive.aa_linf``, ``adaptive.aa_l2``, ``adaptive.bpda``, ``curve``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable, Mapping

from addd.runfolder import METRICS_FILE, RunFolder
from sweeps.trial import SECONDS_PREFIX
from sweeps.trialspec import PHASE_KEY


def _add_attack_seconds(into: dict[str, float], metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
        if key.startswith(SECONDS_PREFIX) and isinstance(value, (int, float)):
            name = key.removeprefix(SECONDS_PREFIX)
            into[name] = round(into.get(name, 0.0) + float(value), 3)


def phase_compute(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """phase -> {"trials": how many, "compute_seconds": summed} from the events log's lines."""
    phase_of, out = {}, defaultdict(lambda: {"trials": 0, "compute_seconds": 0.0})
    for event in events:
        if event.get("event") == "start" and event["trial_id"] not in phase_of:
            phase_of[event["trial_id"]] = event.get(PHASE_KEY, "unknown")
            out[phase_of[event["trial_id"]]]["trials"] += 1
        elif event.get("event") == "epoch":
            entry = out[phase_of.get(event["trial_id"], "unknown")]
            entry["compute_seconds"] = round(entry["compute_seconds"] + float(event.get("compute_seconds", 0.0)), 3)
    return dict(out)


def trial_breakdown(folder: RunFolder, finals: list) -> dict[str, Any]:
    """The breakdown (see the module docstring); ``finals``: the sweep's final TrialOutcomes."""
    out: dict[str, Any] = {}
    if folder.events.exists():
        lines = [json.loads(line) for line in folder.events.read_text().splitlines() if line.strip()]
        out.update(phase_compute(lines))
    sweep_attacks: dict[str, float] = {}
    for outcome in finals:
        _add_attack_seconds(sweep_attacks, outcome.metrics)
    out["finals"] = {"count": len(finals), "attack_seconds": sweep_attacks,
                     "evaluate_seconds": round(sum(float(o.metrics.get("eval_seconds", 0.0)) for o in finals), 3)}
    study = {"count": 0, "train_seconds": 0.0, "evaluate_seconds": 0.0, "attack_seconds": {}}
    for path in sorted(folder.finals.glob(f"*/{METRICS_FILE}")):
        record = json.loads(path.read_text())
        study["count"] += 1
        study["train_seconds"] = round(study["train_seconds"] + record["seconds"]["train"], 3)
        study["evaluate_seconds"] = round(study["evaluate_seconds"] + record["seconds"]["evaluate"], 3)
        _add_attack_seconds(study["attack_seconds"], record["metrics"])
    out["study"] = study
    return out
