"""Build the ablation report from a sweep's (or a study's) ``summary.json``.

Writes into ``out_dir``: ``report.md`` (every defense: tuned ablations, fixed ablations,
baselines; undefended / oblivious / adaptive accuracy per attack with the threat model in each
column header, worst cases, clean and reconstruction accuracy, configs, statistics over seeds,
differences to full with paired-bootstrap intervals and verdicts), ``test_accuracy.csv`` (the
long table of every figure), ``differences.csv``, ``search.csv``, ``ablation.png`` (paper Fig 12
layout), ``robustness_curves.png`` and ``restored.png``. The Optuna plots
(``optuna_*.png``, written by the sweep) are linked when present.

Run on its own: ``python -m ablations.report runs/digits_ablation/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from addd import figures as F
from addd.runfolder import CURVE_FILE, IMAGES_FILE, RunFolder, final_folder, parse_final_folder

KIND_TITLES = {"tuned": "tuned ablation (own search)", "fixed": "fixed ablation (full's best config, one part removed)",
               "baseline": "baseline"}

# ----------------------------------------------------------------------------- data
def all_defenses(summary: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """name -> (kind, entry): tuned variants, fixed ablations (``fixed-<v>``), baselines."""
    out: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for v, e in summary.get("variants", {}).items():
        out[v] = ("tuned", e)
    for v, e in summary.get("fixed", {}).items():
        out[f"fixed-{v}"] = ("fixed", e)
    for k, e in summary.get("baselines", {}).items():
        out[k] = ("baseline", e)
    return out


def known_attacks(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """The known attacks a defense trained on, as summary.json records them (a list)."""
    return tuple(entry.get("known_attacks") or ())


def accuracy_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Long table of every test figure of every defense: variant (= defense name), kind, figure,
    threat_model, attack, mean, std, ci_low, ci_high, n_seeds."""
    rows = []
    for name, (kind, entry) in all_defenses(summary).items():
        for section in (F.TEST, F.ADAPTIVE_SECTION):
            for key, stats in entry.get(section, {}).items():
                fig = F.from_summary(section, key)
                values = [v for v in stats["values"] if v is not None and not math.isnan(v)]
                lo, hi = (stats.get("ci95") or [math.nan, math.nan])
                rows.append({"variant": name, "kind": kind, "figure": fig.name, "threat_model": fig.threat_text,
                             "attack": fig.short, "mean": stats["mean"], "std": stats["std"], "ci_low": lo, "ci_high": hi,
                             "n_seeds": len(values)})
    return pd.DataFrame(rows, columns=["variant", "kind", "figure", "threat_model", "attack", "mean", "std", "ci_low",
                                       "ci_high", "n_seeds"])


def search_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per tuned variant: trials, best validation objective, the best trial's adaptive probe
    (val), and the best config's searched values."""
    rows = []
    for variant, entry in summary["variants"].items():
        config = entry.get("best_config") or {}
        search = entry.get("search", {})
        rows.append({
            "variant": variant,
            "trials": search.get("trials"),
            "complete": search.get("complete"),
            "stopped early (ASHA; pruned in Optuna)": search.get("stopped_early"),
            "failed": search.get("failed"),
            "best_val_objective": search.get("best_val_objective"),
            F.FIGURES[F.PROBE].header: search.get("best_val_probe"),  # the best trial's adaptive probe
            **{k: config.get(k) for k in ("loss.lambda_prior", "loss.lambda_dp", "loss.lambda_cls", "loss.theta_mse",
                                          "loss.sigma", "known_attacks")},
        })
    return pd.DataFrame(rows)


def adaptive_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """variant, attack (adaptive metric), mean, std, n_seeds."""
    rows = []
    for name, (_, entry) in all_defenses(summary).items():
        for metric, stats in entry.get("adaptive", {}).items():
            rows.append({"variant": name, "attack": metric, "mean": stats["mean"], "std": stats["std"],
                         "n_seeds": stats.get("n")})
    return pd.DataFrame(rows, columns=["variant", "attack", "mean", "std", "n_seeds"])


def differences_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for name, c in summary.get("comparisons", {}).items():
        for figure, d in c["figures"].items():
            rows.append({"defense": name, "kind": c["kind"], "figure": figure, "full": d["full"], "other": d["other"],
                         "difference": d["difference"], "ci_low": d["ci95"][0], "ci_high": d["ci95"][1],
                         "within_noise": d["within_noise"], "n_seeds": d["n_seeds"], "n_examples": d["n_examples"],
                         "verdict": d["verdict"]})
    return pd.DataFrame(rows, columns=["defense", "kind", "figure", "full", "other", "difference", "ci_low", "ci_high",
                                       "within_noise", "n_seeds", "n_examples", "verdict"])


# ----------------------------------------------------------------------------- formatting
def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def fmt(stats: Mapping[str, Any] | None, ci: bool = False) -> str:
    """``mean ± std`` (and ``[lo, hi] n=k`` with ci); ``—`` when absent."""
    if not stats or stats.get("mean") is None or (isinstance(stats["mean"], float) and math.isnan(stats["mean"])):
        return "—"
    text = f"{stats['mean']:.3f} ± {stats['std']:.3f}"
    if ci:
        lo, hi = stats.get("ci95") or [math.nan, math.nan]
        text += f" [{lo:.3f}, {hi:.3f}]" if not (math.isnan(lo) or math.isnan(hi)) else " [n/a: 1 seed]"
        text += f" n={stats.get('n')}"
    return text


def _diff_cell(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "—"
    lo, hi = d["ci95"]
    return f"{d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" within noise" if d["within_noise"] else "")


def _figure(entry: Mapping[str, Any], figure: str | F.Figure) -> Mapping[str, Any] | None:
    """A summary entry's statistics of one figure (a stable name or a Figure), None if absent."""
    fig = F.figure(figure) if isinstance(figure, str) else figure
    return entry.get(fig.section, {}).get(fig.key)


def eval_attacks(summary: Mapping[str, Any]) -> list[str]:
    """The scored attacks: summary["eval_attacks"], else those with a defended figure."""
    if summary.get("eval_attacks"):
        return list(summary["eval_attacks"])
    figs = (F.figure(k) for _, (_, e) in all_defenses(summary).items() for k in e.get(F.TEST, {}))
    return list(dict.fromkeys(f.attack for f in figs if f.threat == F.OBLIVIOUS and f.attack))


def _attack_label(attack: str, known: tuple[str, ...]) -> str:
    return f"{attack}*" if attack in known else attack


def _eps(attack: str, dataset: str) -> str:
    try:
        from addd.attacks import attack_params

        eps = attack_params(attack, dataset).get("eps")
    except (KeyError, ValueError, ImportError):
        eps = None
    return f" ε={eps:g}" if isinstance(eps, (int, float)) else ""


def overview_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Rows = defenses; clean, reconstruction, worst cases and adaptive PGD (mean ± std)."""
    eps = _eps("PGDu", summary.get("dataset", ""))
    rows = []
    for name, (kind, entry) in all_defenses(summary).items():
        row = {"defense": name, "kind": kind, "known attacks": "+".join(known_attacks(entry)) or "—"}
        for fig in map(F.figure, F.SUMMARY_FIGURES):
            row[fig.header + (eps if fig.is_adaptive else "")] = fmt(_figure(entry, fig))
        rows.append(row)
    return pd.DataFrame(rows)


def per_attack_overview(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Rows = defenses, columns = attacks (oblivious), each adaptive figure right after the
    oblivious attack with its norm and ε; a known attack of the defense is marked ``*``."""
    attacks = eval_attacks(summary)
    dataset = summary.get("dataset", "")
    rows = []
    for name, (_, entry) in all_defenses(summary).items():
        known = known_attacks(entry)
        row = {"defense": name}
        for attack in attacks:
            row[f"{attack}{_eps(attack, dataset)} oblivious"] = fmt(_figure(entry, F.defended(attack))) + (
                " *" if attack in known else "")
            adaptive = F.adaptive_beside(attack)
            if adaptive and attack != "PGDt":  # PGDt's adaptive figure is PGDu's, shown once
                row[f"{adaptive.key}{_eps(attack, dataset)} adaptive"] = fmt(_figure(entry, adaptive)) + (
                    " *" if adaptive.name in F.known_adaptive(known) else "")
        rows.append(row)
    return pd.DataFrame(rows)


def defense_table(summary: Mapping[str, Any], entry: Mapping[str, Any]) -> pd.DataFrame:
    """One defense: per attack the undefended, oblivious and adaptive figures (mean ± std [95% CI] n)."""
    known = known_attacks(entry)
    dataset = summary.get("dataset", "")
    rows = []
    for attack in eval_attacks(summary):
        adaptive = F.adaptive_beside(attack)
        rows.append({
            "attack (* known)": _attack_label(attack, known) + _eps(attack, dataset),
            "undefended: white-box on M_t": fmt(_figure(entry, F.undefended(attack))),
            "oblivious: on M_t, then defended": fmt(_figure(entry, F.defended(attack)), ci=True),
            "adaptive: on the whole pipeline, same ε": (f"{_adaptive_label(adaptive, known)}: "
                                                        f"{fmt(_figure(entry, adaptive), ci=True)}" if adaptive else "—"),
        })
    for fig in map(F.figure, F.ADAPTIVE_ALONE):
        if _figure(entry, fig):
            rows.append({"attack (* known)": _adaptive_label(fig, known) + _eps(fig.oblivious_attack, dataset),
                         "undefended: white-box on M_t": "—", "oblivious: on M_t, then defended": "—",
                         "adaptive: on the whole pipeline, same ε": fmt(_figure(entry, fig), ci=True)})
    return pd.DataFrame(rows)


# the columns of the Pareto section's table, one per front member (report.md, pareto.csv)
PARETO_FIGURES: tuple[str, ...] = (F.CLEAN, F.RECONSTRUCTION, F.WORST_UNKNOWN, "adaptive.pgd_worst", "adaptive.aa_linf",
                                   "adaptive.aa_l2")
_MEMBER_KEYS = ("known_attacks", "loss.lambda_prior", "loss.lambda_dp", "loss.lambda_cls", "loss.theta_mse", "loss.sigma")


def pareto_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per front member of every pareto variant (in front order, sorted by validation
    reconstruction): its searched config values, then the test figures of :data:`PARETO_FIGURES`
    over its seeds (mean ± std [95% CI] n; ``*``: an adaptive attack the member trained on)."""
    rows = []
    for variant, entry in summary.get("variants", {}).items():
        for index, member in enumerate(entry.get("front") or ()):
            config, known = member.get("ran_config") or {}, known_attacks(member)
            row = {"variant": variant, "member": index,
                   "config": "; ".join(f"{k.split('.')[-1]}={_short(config.get(k))}" for k in _MEMBER_KEYS if k in config)}
            for name in PARETO_FIGURES:
                fig = F.figure(name)
                row[fig.header] = fmt(_figure(member, fig), ci=True) + (" *" if name in F.known_adaptive(known) else "")
            rows.append(row)
    return pd.DataFrame(rows)


# the references drawn beside the front (study baselines; paper_setting: the paper's App. D setting)
PARETO_REFERENCES: tuple[str, ...] = ("no_defense", "ape_gan", "adv_training", "paper_setting")


def _members(summary: Mapping[str, Any]) -> list[tuple[str, int, Mapping[str, Any]]]:
    return [(variant, index, member) for variant, entry in summary.get("variants", {}).items()
            for index, member in enumerate(entry.get("front") or ())]


def pareto_y_figure(summary: Mapping[str, Any]) -> F.Figure:
    """The plot's and the sentence's robustness figure: adaptive AutoAttack L∞ where the run has it,
    else adaptive PGD (a space without AutoAttack)."""
    aa = F.figure("adaptive.aa_linf")
    has_aa = any((_figure(m, aa) or {}).get("mean") is not None for _, _, m in _members(summary))
    return aa if has_aa else F.figure("adaptive.pgd_worst")


def pareto_points(summary: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The front members and the references as the plot's rows (label, x, x_std, y, y_std, colour):
    x = reconstruction, y = :func:`pareto_y_figure`, colour = oblivious worst unknown; means over seeds."""
    y_fig = pareto_y_figure(summary)

    def row(label: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        x, y = _figure(entry, F.RECONSTRUCTION) or {}, _figure(entry, y_fig) or {}
        if x.get("mean") is None or y.get("mean") is None:
            return None
        return {"label": label, "x": x["mean"], "x_std": x.get("std", 0.0), "y": y["mean"], "y_std": y.get("std", 0.0),
                "colour": (_figure(entry, F.WORST_UNKNOWN) or {}).get("mean", float("nan"))}

    members = [row(f"{v} m{i}", m) for v, i, m in _members(summary)]
    baselines = summary.get("baselines") or {}
    references = [row(name, baselines[name]) for name in PARETO_REFERENCES if name in baselines]
    columns = ["label", "x", "x_std", "y", "y_std", "colour"]
    return (pd.DataFrame([r for r in members if r], columns=columns),
            pd.DataFrame([r for r in references if r], columns=columns))


def _interval_words(member: Mapping[str, Any], figure: str) -> str:
    d = ((member.get("vs_adv_training") or {}).get("figures") or {}).get(figure)
    if not d:
        return "no paired interval (run the study: `python -m sweeps.study --sweep <run folder>`)"
    lo, hi = d["ci95"]
    return (f"paired difference {d['difference']:+.3f}, 95% paired-bootstrap interval [{lo:+.3f}, {hi:+.3f}] over "
            f"{d['n_seeds']} seeds x {d['n_examples']} test images: {d['verdict']}")


def _pareto_words(summary: Mapping[str, Any]) -> str:
    """In words: does any front member dominate adv_training (a higher adaptive figure at no lower
    reconstruction), and the best member by the adaptive figure against it, with the paired interval."""
    y_fig = pareto_y_figure(summary)
    members = [(v, i, m) for v, i, m in _members(summary) if (_figure(m, y_fig) or {}).get("mean") is not None]
    if not members:
        return "No front member has an adaptive AutoAttack L∞ or adaptive PGD figure."
    variant, index, member = max(members, key=lambda m: _figure(m[2], y_fig)["mean"])
    ours = _figure(member, y_fig)
    head = (f"The best front member by {y_fig.header} ({variant} member {index}) scores "
            f"{fmt(ours)} at reconstruction {fmt(_figure(member, F.RECONSTRUCTION))}")
    baseline = (summary.get("baselines") or {}).get("adv_training")
    theirs = _figure(baseline, y_fig) if baseline else None
    if not theirs or theirs.get("mean") is None:
        return head + "; no adv_training baseline in this run."
    recon = (_figure(baseline, F.RECONSTRUCTION) or {}).get("mean", float("nan"))
    dominating = [(v, i) for v, i, m in members if _figure(m, y_fig)["mean"] > theirs["mean"]
                  and (_figure(m, F.RECONSTRUCTION) or {}).get("mean", float("-inf")) >= recon]
    answer = (f"**Yes**: {', '.join(f'{v} member {i}' for v, i in dominating)} dominate(s) adversarial training "
              if dominating else "**No**: no front member dominates adversarial training ")
    difference = ours["mean"] - theirs["mean"]
    return (answer + f"(a higher {y_fig.header} at no lower reconstruction accuracy; means over seeds). " + head
            + f", against adv_training's {fmt(theirs)} at reconstruction {fmt(_figure(baseline, F.RECONSTRUCTION))}: "
            f"{'higher' if difference > 0 else 'not higher'} by {difference:+.3f}; "
            + _interval_words(member, y_fig.name) + ".")


def _hypervolume_line(summary: Mapping[str, Any]) -> str:
    parts = []
    for variant, entry in summary.get("variants", {}).items():
        hv = entry.get("front_hypervolume")
        if not hv:
            continue
        val = "—" if hv.get("val") is None else f"{hv['val']:.4f}"
        test = "—" if hv.get("test") is None else f"{hv['test']:.4f}"
        parts.append(f"{variant}: {val} on validation ({', '.join(hv['val_axes'])}, the search's values), {test} on "
                     f"test ({', '.join(hv['test_axes'])}, means over seeds; {hv['members_with_test_values']} of "
                     f"{hv['members']} members)")
    return ("Hypervolume of the front (reference point 0 on every axis, each an accuracy in [0, 1]; 1 would be "
            "perfect on all three): " + "; ".join(parts) + ".") if parts else ""


def _pareto_section(summary: Mapping[str, Any]) -> list[str]:
    """The Pareto section of report.md, only for a sweep with a pareto front."""
    table = pareto_table(summary)
    if table.empty:
        return []
    return ["\n## Pareto front (objective pareto: reconstruction, oblivious worst unknown, adaptive probe)\n",
            "Each member is a non-dominated complete search trial, re-run over the seeds; test split, mean ± std "
            "[95% t-interval] n seeds. `pareto.png` draws the front (adaptive figure against reconstruction, colour: "
            "oblivious worst unknown) beside no_defense, ape_gan, adv_training and the paper's setting.\n",
            _markdown(table), "\n" + _hypervolume_line(summary) + "\n", "\n" + _pareto_words(summary) + "\n"]


def _adaptive_label(fig: F.Figure, known: tuple[str, ...]) -> str:
    """An adaptive figure's short name, ``*`` when the defense trained on its attack (online PGDa)."""
    return f"{fig.key}*" if fig.name in F.known_adaptive(known) else fig.key


def _config_rows(summary: Mapping[str, Any]) -> pd.DataFrame:
    keys = ("known_attacks", "loss.lambda_prior", "loss.lambda_dp", "loss.lambda_cls", "loss.theta_mse", "loss.sigma",
            "loss.use_dp", "loss.use_prior", "loss.use_mmd", "loss.use_di", "network.width", "train.epochs",
            "train.batch_size", "train.lr", "baseline", "apegan.mse_weight")
    rows = []
    for name, (kind, entry) in all_defenses(summary).items():
        config = entry.get("ran_config") or {}  # the config that trained (the ablation applied), as recorded
        rows.append({"defense": name, "kind": kind, **{k: _short(config.get(k)) for k in keys}})
    frame = pd.DataFrame(rows)
    return frame.loc[:, [c for c in frame.columns if frame[c].astype(str).ne("—").any() or c in ("defense", "kind")]]


def _short(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def _words(summary: Mapping[str, Any]) -> list[str]:
    """The differences to full in plain words, headline figures first."""
    lines = []
    for name, c in summary.get("comparisons", {}).items():
        for figure in (F.WORST_UNKNOWN, F.WORST_PER_SAMPLE, F.adaptive_beside("PGDu").name):
            d = c["figures"].get(figure)
            if d:
                lines.append(f"- **{name}** ({c['kind']}), {figure}: {d['other']:.3f} vs full {d['full']:.3f}, "
                             f"difference {d['verdict']}.")
    return lines


def _fig12_check(summary: Mapping[str, Any]) -> str:
    """Did the paper's Fig 12 ordering (full ≥ no_prior, no_dp on unknown attacks) hold?"""
    parts = []
    for name in ("no_prior", "no_dp", "fixed-no_prior", "fixed-no_dp"):
        d = summary.get("comparisons", {}).get(name, {}).get("figures", {}).get(F.WORST_UNKNOWN)
        if not d:
            continue
        if d["within_noise"]:
            held = "no difference can be claimed (within noise)"
        elif d["difference"] < 0:
            held = "holds (full is higher, outside noise)"
        else:
            held = "is reversed (full is lower, outside noise)"
        parts.append(f"- full ≥ {name} on worst unknown attack: {held}; {name} − full = {d['difference']:+.3f}, "
                     f"95% interval [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], {d['n_seeds']} seed(s) × {d['n_examples']} test examples.")
    return "\n".join(parts) if parts else "- not computed (no comparisons in the summary; run `python -m sweeps.study --sweep <run folder>`)."


# ----------------------------------------------------------------------------- files
def curve_frames(finals_dir: Path | None) -> dict[str, pd.DataFrame]:
    """defense -> its robustness curves (finals/<defense>-seed<k>/robustness_curve.csv), stacked."""
    frames: dict[str, list[pd.DataFrame]] = {}
    found = sorted(Path(finals_dir).glob(f"*/{CURVE_FILE}")) if finals_dir and Path(finals_dir).exists() else []
    for path in found:
        parsed = parse_final_folder(path.parent.name)
        if parsed is not None:
            frames.setdefault(parsed[0], []).append(pd.read_csv(path).assign(seed=parsed[1]))
    return {v: pd.concat(f, ignore_index=True) for v, f in frames.items()}


def build_report(summary: Mapping[str, Any], out_dir: Path, finals_dir: Path | None = None) -> list[Path]:
    """Write report.md, the CSV tables, ablation.png, robustness_curves.png and restored.png into
    ``out_dir``; return the paths written (plus the Optuna plots found there)."""
    from ablations.plots import ablation_bars, plt, restored_grid, robustness_curves

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{summary.get('space', '?')}{' (smoke)' if summary.get('smoke') else ''}"
    tests, searches, diffs = accuracy_table(summary), search_table(summary), differences_table(summary)
    paths = [out_dir / "test_accuracy.csv", out_dir / "search.csv", out_dir / "differences.csv"]
    tests.to_csv(paths[0], index=False)
    searches.to_csv(paths[1], index=False)
    diffs.to_csv(paths[2], index=False)
    if not (front := pareto_table(summary)).empty:
        front.to_csv(out_dir / "pareto.csv", index=False)
        paths += [out_dir / "pareto.csv", _pareto_png(summary, out_dir, title)]
    full_known = known_attacks((summary.get("variants", {}).get("full") or {}))
    figure = ablation_bars(tests, summary, full_known, f"Ablation (paper Fig 12 layout): {title}")
    figure.savefig(out_dir / "ablation.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    paths.append(out_dir / "ablation.png")
    curves = curve_frames(finals_dir)
    if curves:
        pd.concat([f.assign(defense=v) for v, f in curves.items()]).to_csv(out_dir / "robustness_curves.csv", index=False)
        figure = robustness_curves(curves, f"Robustness curves (L-inf, test split, seed 0): {title}")
        figure.savefig(out_dir / "robustness_curves.png", dpi=100)
        plt.close(figure)
        paths += [out_dir / "robustness_curves.csv", out_dir / "robustness_curves.png"]
    best = summary.get("best")
    restored = None
    if best and finals_dir:
        images = Path(finals_dir) / final_folder(best["variant"], best["seed"]) / IMAGES_FILE
        if images.exists():
            from addd.storage import load_tensors

            tensors, _ = load_tensors(images)
            figure = restored_grid(tensors, title=f"{best['variant']} seed {best['seed']} (best validation objective): "
                                                  f"original / adversarial / restored")
            figure.savefig(out_dir / "restored.png", dpi=100)
            plt.close(figure)
            paths.append(out_dir / "restored.png")
            restored = best
    optuna_plots = sorted(out_dir.glob("optuna_*.png"))
    report = out_dir / "report.md"
    from ablations.reproduction import reproduction_section

    report.write_text(_report_text(summary, title, searches, restored, bool(curves), optuna_plots)
                      + reproduction_section(summary))  # the paper's claims beside this run's figures
    paths.append(report)
    return paths


def _pareto_png(summary: Mapping[str, Any], out_dir: Path, title: str) -> Path:
    from ablations.plots import pareto_plot, plt

    points, references = pareto_points(summary)
    y_fig = pareto_y_figure(summary)
    figure = pareto_plot(points, references, f"{y_fig.header} (test)",
                         f"Pareto front against the baselines: {title} (mean ± std over seeds)")
    figure.savefig(out_dir / "pareto.png", dpi=100)
    plt.close(figure)
    return out_dir / "pareto.png"


def _report_text(summary, title, searches, restored, curves: bool, optuna_plots) -> str:
    defenses = all_defenses(summary)
    out = [*_intro(summary, title, defenses), *_threat_lines(summary),
           "## Overview\n", _markdown(overview_table(summary)),
           "\n## Per attack (oblivious, with the adaptive figure for the same ε beside it)\n",
           _markdown(per_attack_overview(summary)), *_differences(summary), *_per_defense(summary, defenses),
           "## Configs\n", _markdown(_config_rows(summary)),
           f"\n## Search (objective: {summary.get('objective', '?')})\n", _markdown(searches), *_pareto_section(summary),
           *_figure_lines(restored, curves, optuna_plots), *_study_line(summary)]
    return "\n".join(out) + "\n"


def _intro(summary, title: str, defenses) -> list[str]:
    n_test = (summary.get("splits") or {}).get("test")
    seeds = sorted({s["seed"] for _, e in defenses.values() for s in e.get("seeds", [])})
    full_known = known_attacks((summary.get("variants", {}).get("full") or {}))
    return [f"# Ablation report: {title}\n",
            f"Dataset `{summary.get('dataset')}`, {n_test} test examples, seeds {seeds}, attack budget "
           f"{summary.get('attack_budget')}; every figure is test accuracy, **mean ± std over seeds**, with the 95% "
           f"t-interval of the mean and n seeds where shown. Defenses: **tuned** ablations (each variant's own best "
           f"config from its search, re-run over seeds), **fixed** ablations (the best `full` config with one component "
           f"removed, same seeds) and **baselines** (`no_defense` = M_t alone; `ape_gan` = the paper's Table 1 "
           f"baseline; `adv_training` = M_t's architecture trained adversarially, Fig 1's Def-adv), trained with full's "
           f"data, known attacks ({'+'.join(full_known) or '?'}), epochs, batch size, lr, width and seeds.\n"]


def _threat_lines(summary) -> list[str]:
    return ["## Threat models and names\n",
           "- **clean** = M_t(x): the *undefended* target model on clean test images (no attack, no defense).",
           "- **reconstruction** = M_t(G(E(x))): clean images through the defense (baselines: through their "
           "restore, M_t replaced by the adversarially trained model for `adv_training`, whose clean and "
           "undefended figures and curve reference stay M_t's; its oblivious sets are M_t's, i.e. transfer attacks).",
           "- **undefended** = white-box attack on M_t, no defense: M_t(x_adv) with x_adv computed on M_t.",
           "- **oblivious** = x_adv computed on M_t alone, then M_t(G(E(x_adv))) (the paper's Table 1 setting). "
           "Targeted attacks use Acc_t.",
           "- **adaptive** = x_adv computed on the whole pipeline M_t(G(E(.))) with the true gradient "
           "(PGD with CE and margin loss, worse of the two per example; AutoAttack), at the same norm and ε as the "
           "oblivious attack it sits beside. BPDA is the paper's Sec 4.3 attack (identity backward pass).",
           "- **worst unknown** = min over the attacks the defense did not train on; **per sample** = an example counts "
           "only if it survives every unknown attack; **worst holdout** = min over "
           f"{', '.join(summary.get('holdout_attacks', [])) or 'the holdout attacks'} (never trained on).",
           "- `*` marks a **known** attack (the defense trained on its examples); the others are unknown.\n"]


def _differences(summary) -> list[str]:
    out = ["\n## Differences to full (paired bootstrap over seeds and test examples, 95% percentile interval)\n"]
    comps = summary.get("comparisons", {})
    if comps:
        figures = [*F.WORST_FIGURES, F.adaptive_beside("PGDu").name, *[F.defended(a).name for a in eval_attacks(summary)]]
        rows = [{"defense": n, "kind": c["kind"], **{f: _diff_cell(c["figures"].get(f)) for f in figures}}
                for n, c in comps.items()]
        n_boot = next(iter(comps.values())).get("n_boot")
        out += [f"other − full; \"within noise\": the interval contains 0 ({n_boot} bootstrap replicates).\n",
                _markdown(pd.DataFrame(rows)), "\nIn words:\n", *_words(summary), "",
                "Paper Fig 12 ordering (full ≥ no_prior, no_dp on unknown attacks):\n", _fig12_check(summary), ""]
    else:
        out.append("Not computed: run `python -m sweeps.study --sweep <run folder>` for fixed ablations, baselines and "
                   "intervals.\n")
    return out


def _per_defense(summary, defenses) -> list[str]:
    out = ["## Each defense: undefended / oblivious / adaptive per attack\n"]
    for name, (kind, entry) in defenses.items():
        out += [f"### {name} — {KIND_TITLES[kind]}\n",
                f"clean (M_t(x), undefended): {fmt(_figure(entry, F.CLEAN), ci=True)}; reconstruction "
                f"(M_t(G(E(x)))): {fmt(_figure(entry, F.RECONSTRUCTION), ci=True)}; worst unknown (oblivious): "
                f"{fmt(_figure(entry, F.WORST_UNKNOWN), ci=True)}; per sample: "
                f"{fmt(_figure(entry, F.WORST_PER_SAMPLE), ci=True)}; worst holdout: "
                f"{fmt(_figure(entry, F.WORST_HOLDOUT), ci=True)}.\n",
                _markdown(defense_table(summary, entry)) if eval_attacks(summary) else "", ""]
    return out


# sweeps._optuna.save_study_plots writes optuna_<label>_<study>.png; what each label draws
OPTUNA_PLOT_WORDS = {"history": "optimisation history", "importances": "parameter importances",
                     "pareto_front": "Pareto front", "hypervolume": "hypervolume history (reference point 0)"}


def _figure_lines(restored, curves: bool, optuna_plots) -> list[str]:
    out = ["\n## Figures\n",
            "- `ablation.png`: paper Fig 12 layout. Rows: tuned ablations, fixed ablations, baselines (each with full); "
            "left: full's known attacks, right: unknown attacks; oblivious test accuracy, bars = mean over seeds, "
            "error bars = ± std; the y axis is zoomed to the data (not 0–1), legend outside the bars."]
    if curves:
        out.append("- `robustness_curves.png`: accuracy against L-inf ε for every defense with a curve (seed 0): the "
                   "undefended model under white-box PGD, the defended pipeline under oblivious PGD and under "
                   "adaptive PGD.")
    if restored:
        out.append(f"- `restored.png`: {restored['variant']} seed {restored['seed']} (the best validation objective): "
                   f"original, adversarial and restored validation images per attack, predicted label above each "
                   f"(red: wrong).")
    for path in optuna_plots:
        label = next((k for k in OPTUNA_PLOT_WORDS if path.name.startswith(f"optuna_{k}_")), None)
        words = OPTUNA_PLOT_WORDS.get(label, "plot")
        out.append(f"- `{path.name}`: Optuna {words}"
                   f" of variant {path.stem.rsplit('-', 1)[-1]} (title names the variant).")
    return out


def _study_line(summary) -> list[str]:
    out = []
    study = summary.get("study")
    if study:
        t = study.get("timings_seconds", {})
        out.append(f"\nStudy: {len(study.get('trained', []))} final(s) trained in this run, "
                   f"{t.get('this_run', float('nan')):.0f}s this run; per final (train + evaluate, when computed): "
                   + ", ".join(f"{k} {v:.0f}s" for k, v in t.items() if "-seed" in k) + f" ({study.get('parallelism')}).")
    return out


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
    folder = RunFolder(args.summary.parent)
    for path in build_report(summary, args.out or folder.report, folder.finals):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
