"""Build the ablation report from a sweep's ``summary.json``: tables (CSV, Markdown) and a
Fig-12-style plot. Run on its own: ``python -m ablations.report runs/digits_ablation/summary.json``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

DEFENDED = "acc.defended."


def accuracy_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Long table of test figures: variant, attack, mean, std, n_seeds (defended accuracies),
    plus the rows clean, reconstruction, worst.unknown, worst.holdout, worst.unknown_per_sample."""
    rows = []
    extras = {"acc.clean": "clean", "acc.reconstruction": "reconstruction", "worst.unknown": "worst unknown",
              "worst.unknown_per_sample": "worst unknown (per sample)", "worst.holdout": "worst holdout"}
    for variant, entry in summary["variants"].items():
        for name, stats in entry["test"].items():
            if name.startswith(DEFENDED):
                attack = name[len(DEFENDED):]
            elif name in extras:
                attack = extras[name]
            else:
                continue
            values = [v for v in stats["values"] if v is not None and not math.isnan(v)]
            rows.append({"variant": variant, "attack": attack, "mean": stats["mean"], "std": stats["std"], "n_seeds": len(values)})
    return pd.DataFrame(rows, columns=["variant", "attack", "mean", "std", "n_seeds"])


def search_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per variant: trials, best validation objective, and the best config's searched values."""
    rows = []
    for variant, entry in summary["variants"].items():
        config = entry["best_config"]
        rows.append({
            "variant": variant,
            "trials": entry["search"]["trials"],
            "best_val_objective": entry["search"]["best_val_objective"],
            **{k: config.get(k) for k in ("loss.lambda_prior", "loss.lambda_dp", "loss.lambda_cls", "loss.theta_mse", "loss.sigma", "known_attacks")},
        })
    return pd.DataFrame(rows)


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def curve_frames(curves_dir: Path | None) -> dict[str, pd.DataFrame]:
    """variant -> its final seeds' robustness curves (curves/<variant>-seed<k>.csv), stacked."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(Path(curves_dir).glob("*-seed*.csv")) if curves_dir and Path(curves_dir).exists() else []:
        variant, _, seed = path.stem.rpartition("-seed")
        frames.setdefault(variant, []).append(pd.read_csv(path).assign(seed=int(seed)))
    return {v: pd.concat(f, ignore_index=True) for v, f in frames.items()}


def build_report(summary: Mapping[str, Any], out_dir: Path, curves_dir: Path | None = None,
                 best_dir: Path | None = None) -> list[Path]:
    """Write test/search tables (CSV + Markdown), the Fig-12 plot, the robustness curves and the
    restored images of the best defense into ``out_dir``; return the paths."""
    from ablations.plots import ablation_bars, plt, restored_grid, robustness_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    tests, searches = accuracy_table(summary), search_table(summary)
    wide = tests.assign(cell=[f"{m:.3f} ± {s:.3f}" for m, s in zip(tests["mean"], tests["std"])]).pivot(
        index="attack", columns="variant", values="cell"
    ).reindex(index=list(dict.fromkeys(tests["attack"])), columns=list(summary["variants"]))
    paths = [out_dir / "test_accuracy.csv", out_dir / "search.csv", out_dir / "report.md", out_dir / "fig12_ablation.png"]
    tests.to_csv(paths[0], index=False)
    searches.to_csv(paths[1], index=False)
    title = f"{summary['space']}{' (smoke)' if summary.get('smoke') else ''}"
    adaptive = adaptive_table(summary)
    paths[2].write_text(
        f"# Ablation report: {title}\n\nTest accuracy, mean ± std over seeds. Rows `acc.defended` are "
        f"**oblivious** (x_adv computed on M_t alone, then M_t(G(E(x_adv)))); targeted attacks use Acc_t:\n\n"
        f"{_markdown(wide.reset_index())}\n"
        f"**Adaptive** (attacks on the whole pipeline M_t(G(E(.))), same ε as the oblivious PGD):\n\n"
        f"{_markdown(adaptive) if len(adaptive) else 'not computed'}\n\n"
        f"Search (objective: {summary['objective']}):\n\n{_markdown(searches)}"
    )
    per_attack = tests[~tests["attack"].isin(["clean", "reconstruction", "worst unknown", "worst unknown (per sample)", "worst holdout"])]
    figure = ablation_bars(per_attack, f"Ablation (Fig 12 style): {title}")
    figure.savefig(paths[3], dpi=100)
    plt.close(figure)
    curves = curve_frames(curves_dir)
    if curves:
        pd.concat([f.assign(defense=v) for v, f in curves.items()]).to_csv(out_dir / "robustness_curves.csv", index=False)
        figure = robustness_curves(curves, f"Robustness curves (L-inf, test split): {title}")
        figure.savefig(out_dir / "robustness_curves.png", dpi=100)
        plt.close(figure)
        paths += [out_dir / "robustness_curves.csv", out_dir / "robustness_curves.png"]
    best = summary.get("best")
    if best and curves_dir:
        images = Path(curves_dir) / f"{best['variant']}-seed{best['seed']}.images.safetensors"
        if images.exists():
            from addd.storage import load_tensors

            tensors, _ = load_tensors(images)
            figure = restored_grid(tensors)
            figure.savefig(out_dir / "restored.png", dpi=100)
            plt.close(figure)
            paths.append(out_dir / "restored.png")
    return paths


def adaptive_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """variant, attack (adaptive), mean, std, n_seeds."""
    rows = []
    for variant, entry in summary["variants"].items():
        for name, stats in entry.get("adaptive", {}).items():
            rows.append({"variant": variant, "attack": name, "mean": stats["mean"], "std": stats["std"],
                         "n_seeds": stats.get("n")})
    return pd.DataFrame(rows, columns=["variant", "attack", "mean", "std", "n_seeds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", type=Path, help="a sweep's summary.json")
    parser.add_argument("--out", type=Path, help="output folder (default: report/ next to the summary)")
    args = parser.parse_args(argv)
    try:
        summary = json.loads(args.summary.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {args.summary}: {exc}; give the summary.json of a finished sweep", file=sys.stderr)
        return 2
    for path in build_report(summary, args.out or args.summary.parent / "report"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
