"""The report's reproduction section: every paper claim (``ablations.paper_claims``) beside this
run's figure for it, from a sweep's ``summary.json``, with a verdict in words.

Columns: the claim (source) | the paper's threat model | the paper's value | this run, oblivious
(mean ± std over seeds, 95% t-interval of the mean, n seeds) | this run, adaptive (the same
attack on the whole pipeline, where the claim has a counterpart) | the verdict. Verdicts compare
the paper's value with the oblivious interval ("reproduced within the interval", "lower",
"higher"), and say what an adaptive figure below that interval means for the claim. A claim
this project cannot measure stays in the table as "not measured" with the reason.

Reads only the summary format (``variants.<v>.test`` / ``.adaptive``, ``baselines.<k>``,
``fixed.<v>``); ``build_report`` appends :func:`reproduction_section` to report.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from addd import figures as F
from ablations.paper_claims import CLAIMS, THREAT_MODELS, PaperClaim, claims_for

COLUMNS = ["claim (source)", "threat model (paper)", "paper", "this run, oblivious (mean ± std [95% interval] n)",
           "this run, adaptive (whole pipeline)", "verdict"]
PAPER_SPLITS = {"train": 60000, "test": 10000}  # MNIST's official split, the paper's setting
NO_CLAIMS = "no paper figure for this dataset"


def _entry(summary: Mapping[str, Any], defense: str) -> Mapping[str, Any] | None:
    for section in ("variants", "baselines", "fixed"):
        entry = (summary.get(section) or {}).get(defense)
        if entry is not None:
            return entry
    return None


def figure_stats(summary: Mapping[str, Any], defense: str, figure: str) -> Mapping[str, Any] | None:
    """The over-seeds stats of ``figure`` for ``defense`` (None when absent or not finite)."""
    entry = _entry(summary, defense)
    if entry is None:
        return None
    fig = F.figure(figure)
    stats = (entry.get(fig.section) or {}).get(fig.key)
    if not stats or not _finite(stats.get("mean")):
        return None
    return stats


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(stats: Mapping[str, Any]) -> tuple[float, float] | None:
    low, high = (stats.get("ci95") or [math.nan, math.nan])
    return (low, high) if stats.get("n", 0) >= 2 and _finite(low) and _finite(high) else None


def _cell(stats: Mapping[str, Any] | None) -> str:
    if stats is None:
        return "—"
    interval = _interval(stats)
    text = f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    text += f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else " [no interval: 1 seed]"
    return text + f" n={stats.get('n')}"


def _known_attacks(summary: Mapping[str, Any], defense: str) -> tuple[str, ...]:
    entry = _entry(summary, defense) or {}
    return tuple(entry.get("known_attacks") or ())  # recorded as a list (sweeps.summary.config_entry)


def _oblivious_words(claim: PaperClaim, stats: Mapping[str, Any]) -> str:
    mean, paper, interval = stats["mean"], claim.paper_value, _interval(stats)
    if interval is None:
        side = "lower" if mean < paper else "higher"
        return f"one seed, no interval: {mean:.4f} is {side} than the paper's {paper:.4f}; no verdict"
    if interval[0] <= paper <= interval[1]:
        return "reproduced: the paper's value lies within this run's 95% interval"
    if paper > interval[1]:
        return f"lower than the paper: {paper:.4f} is above this run's interval"
    return f"higher than the paper: {paper:.4f} is below this run's interval"


def _adaptive_words(oblivious: Mapping[str, Any], adaptive: Mapping[str, Any] | None) -> str:
    if adaptive is None:
        return "no adaptive figure in this run"
    interval = _interval(oblivious) or (oblivious["mean"], oblivious["mean"])
    if adaptive["mean"] < interval[0]:
        return (f"adaptive {adaptive['mean']:.4f} is below the oblivious figure: the claim holds only against an "
                f"attacker who ignores the defense (the paper's threat model), not against one who attacks M_t∘G∘E")
    if adaptive["mean"] > interval[1]:
        return (f"adaptive {adaptive['mean']:.4f} is above the oblivious figure: the attack through the pipeline "
                f"found fewer errors than the one on M_t, so the adaptive attack is too weak to bound the claim")
    return ("the adaptive figure agrees with the oblivious one: attacking M_t∘G∘E does not lower it, so the verdict "
            "above also stands against the adaptive attacker")


def verdict(claim: PaperClaim, oblivious: Mapping[str, Any] | None, adaptive: Mapping[str, Any] | None,
            known: Sequence[str] = ()) -> str:
    """The verdict on one claim in words (see the module docstring)."""
    if claim.not_measured:
        return f"not measured: {claim.not_measured}"
    if oblivious is None:
        return f"not measured in this run: summary.json has no finite {claim.figure} for {claim.defense}"
    words = [_oblivious_words(claim, oblivious)]
    if claim.trained_on and known and set(known) != set(claim.trained_on):
        words.append(f"this run's defense trained on {'+'.join(known)}, the paper's on {claim.paper_training}")
    elif claim.trained_on and "(this suite" in claim.paper_training:
        words.append(f"the paper's defense trained on {claim.paper_training}")
    if claim.adaptive_figure:
        words.append(_adaptive_words(oblivious, adaptive))
    return "; ".join(words)


def reproduction_table(summary: Mapping[str, Any], claims: Sequence[PaperClaim] | None = None) -> pd.DataFrame:
    """One row per claim (``claims`` default: those of the summary's dataset), columns ``COLUMNS``."""
    claims = claims_for(summary.get("dataset", "")) if claims is None else claims
    rows = []
    for claim in claims:
        oblivious = figure_stats(summary, claim.defense, claim.figure) if claim.figure else None
        adaptive = figure_stats(summary, claim.defense, claim.adaptive_figure) if claim.adaptive_figure else None
        known = _known_attacks(summary, claim.defense) if claim.defense else ()
        where = f" → `{claim.defense}` {claim.figure}" if claim.figure else ""
        rows.append([f"{claim.source}{where}", claim.threat_model, f"{claim.paper_value:.4f}",
                     "not measured" if claim.not_measured else _cell(oblivious),
                     (_cell(adaptive) + f" ({claim.adaptive_figure})") if claim.adaptive_figure else "—",
                     verdict(claim, oblivious, adaptive, known)])
    return pd.DataFrame(rows, columns=COLUMNS)


def setting_differences(summary: Mapping[str, Any]) -> list[str]:
    """How this run's setting differs from the paper's MNIST setting, read from the summary."""
    splits = summary.get("splits") or {}
    config = ((summary.get("variants") or {}).get("full") or {}).get("best_config") or {}
    target = summary.get("target_model") or {}
    lines = [f"- data: {splits.get('train', '?')} training / {splits.get('val', '?')} validation / "
             f"{splits.get('test', '?')} test images (the paper: MNIST's {PAPER_SPLITS['train']:,} / "
             f"{PAPER_SPLITS['test']:,}); intervals are over seeds on this one test subset."]
    if _finite(target.get("clean_test_accuracy")):
        lines.append(f"- target model {target.get('arch')}: clean test accuracy {target['clean_test_accuracy']:.4f} "
                     f"(the paper's LeNet: 0.9889, Table 2).")
    if config:
        lines.append(f"- defense: width {config.get('network.width')} (the paper: 1.0, Table 4), "
                     f"{config.get('train.epochs')} epochs, known attacks {config.get('known_attacks')}.")
    if summary.get("attack_budget") != 1.0:
        lines.append(f"- attack budget {summary.get('attack_budget')}: iterations, steps and queries are that "
                     f"fraction of App. C.1's, so these figures are not at the paper's attack strength.")
    return lines


def reproduction_section(summary: Mapping[str, Any]) -> str:
    """The report's "Reproduction of the paper's figures" section (Markdown)."""
    from ablations.report import _markdown

    dataset = summary.get("dataset", "")
    out = ["\n## Reproduction of the paper's figures\n"]
    claims = claims_for(dataset)
    if not claims:
        entered = ", ".join(f"`{name}`" for name in CLAIMS)
        return "\n".join(out + [f"Dataset `{dataset}`: {NO_CLAIMS} (claims are entered for {entered}).\n"])
    out += ["Threat models: " + "; ".join(f"**{k}** = {v}" for k, v in THREAT_MODELS.items()) + ". The paper's "
            "figures are single numbers; this run's are test accuracy over seeds, the verdict compares the paper's "
            "value with this run's 95% interval of the mean (seed-to-seed noise only, not test-sample noise). "
            "Fig 3 and Fig 5(a) give no numbers in the text and are not cited; RP2 (Fig 4(a), LISA traffic signs, "
            "plotted only) is not measured: the suite has no RP2 attack.\n",
            _markdown(reproduction_table(summary)),
            "\nThis run's setting, where it is not the paper's:\n", *setting_differences(summary), ""]
    return "\n".join(out)
