"""The figure registry: every figure's stable name, threat model, label, counterpart and spelling.

A *figure* is one number a researcher reads: an accuracy under one threat model. Its stable
name is what :mod:`addd.evaluate` and :mod:`addd.adaptive` compute (``acc.defended.PGDu``,
``worst.unknown``, ``adaptive.pgd_worst``, ``probe.pgd``). Every other place a figure goes spells
it through :class:`Figure`, so a new figure (the adaptive probe, an objective) is added here once:

=====================  ===============================  ================================
destination            method                           e.g. ``adaptive.pgd_worst`` / ``acc.defended.PGDu``
=====================  ===============================  ================================
trial report, child    :meth:`Figure.trial_key`         ``adaptive/pgd_worst`` / ``test/acc.defended.PGDu``
summary.json           :attr:`Figure.section`, ``key``  ``["adaptive"]["pgd_worst"]`` / ``["test"]["acc.defended.PGDu"]``
MLflow parent run      :meth:`Figure.parent_metric`     ``full/adaptive/pgd_worst`` / ``full/test/oblivious/PGDu``
per-example file       :attr:`Figure.per_example_key`   ``adaptive.pgd_worst.correct`` / ``oblivious.PGDu.correct``
report                 :attr:`Figure.label`, ``header`` ``PGD adaptive on M_t∘G∘E (CE+margin)``
=====================  ===============================  ================================

Threat models (:data:`THREAT_MODELS`): ``none`` (no attack), ``undefended`` (x_adv on M_t,
classified by M_t), ``oblivious`` (x_adv on M_t alone, classified by M_t∘G∘E: the paper's
setting), ``adaptive`` (x_adv computed on the whole pipeline M_t∘G∘E). The pairing of each
oblivious attack with the adaptive figure shown beside it (same defense, norm and ε) is
:func:`adaptive_beside`; its inverse :attr:`Figure.oblivious_attack`.

Pure Python: no torch, Ray, Optuna or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from addd.errors import AdddError

NONE, UNDEFENDED, OBLIVIOUS, ADAPTIVE = "none", "undefended", "oblivious", "adaptive"

THREAT_MODELS: dict[str, str] = {
    NONE: "no attack: M_t(x) (clean) or M_t(G(E(x))) (reconstruction)",
    UNDEFENDED: "white-box on M_t, no defense: M_t(x_adv), x_adv computed on M_t",
    OBLIVIOUS: "oblivious: x_adv computed on M_t alone, then M_t(G(E(x_adv))) (the paper's Table 1)",
    ADAPTIVE: "adaptive: x_adv computed on the whole pipeline M_t(G(E(.))) (white-box PGD, AutoAttack; "
              "BPDA is the paper's Sec 4.3 attack with an identity backward pass)",
}
# a column header's words for each threat model (report tables)
THREAT_WORDS: dict[str, str] = {NONE: "no attack", UNDEFENDED: "undefended (white-box on M_t)", OBLIVIOUS: "oblivious",
                                ADAPTIVE: "adaptive (whole pipeline)"}

DEFENDED_PREFIX, UNDEFENDED_PREFIX = "acc.defended.", "acc.undefended."
ADAPTIVE_PREFIX = "adaptive."
TEST, ADAPTIVE_SECTION, VAL = "test", "adaptive", "val"  # summary.json sections (per seed and over seeds)


class FigureError(AdddError):
    """An unknown figure name; the message lists the valid ones."""


@dataclass(frozen=True)
class Figure:
    """One figure. ``name`` is stable; every spelling below derives from it."""

    name: str
    threat: str  # a key of THREAT_MODELS
    label: str  # what a person reads (report rows, plots)
    column: str | None = None  # a report column header, where it differs from label
    attack: str | None = None  # the suite attack of a per-attack figure
    oblivious_attack: str | None = None  # adaptive figures: the oblivious attack shown beside it
    split: str | None = None  # a figure computed on one split only (the search's probe: "val")

    @property
    def is_adaptive(self) -> bool:
        return self.threat == ADAPTIVE

    @property
    def section(self) -> str:
        """Its section in summary.json (``test``: the oblivious suite; ``adaptive``: whole-pipeline
        attacks on the test split; a split-bound figure: that split's name)."""
        if self.split is not None:
            return self.split
        return ADAPTIVE_SECTION if self.is_adaptive else TEST

    @property
    def key(self) -> str:
        """Its key inside :attr:`section` of summary.json."""
        return self.name.removeprefix(ADAPTIVE_PREFIX) if self.is_adaptive and self.split is None else self.name

    def trial_key(self, split: str = TEST) -> str:
        """Its name in a trial's report and MLflow child run (``val/worst.unknown``, ``adaptive/pgd_worst``,
        ``val/probe.pgd_worst``)."""
        if self.split is not None:
            return f"{self.split}/{self.name}"
        return f"{ADAPTIVE_SECTION}/{self.key}" if self.is_adaptive else f"{split}/{self.name}"

    def parent_metric(self, defense: str) -> str:
        """Its name in the sweep's MLflow parent run, saying its threat model."""
        if self.split is not None:
            return f"{defense}/{self.split}/{self.threat}/{self.name}"
        if self.is_adaptive:
            return f"{defense}/{ADAPTIVE_SECTION}/{self.key}"
        if self.attack is not None:
            return f"{defense}/{TEST}/{self.threat}/{self.attack}"
        if self.threat == OBLIVIOUS:
            return f"{defense}/{TEST}/{OBLIVIOUS}/{self.name}"
        return f"{defense}/{TEST}/{self.name}"

    @property
    def per_example_key(self) -> str | None:
        """Its per-example correctness in ``per_example.safetensors`` (None: derived from others)."""
        if self.split is not None:
            return None
        if self.is_adaptive:
            return f"{self.name}.correct"
        if self.threat == OBLIVIOUS and self.attack is not None:
            return f"{OBLIVIOUS}.{self.attack}.correct"
        return None

    @property
    def excluded_key(self) -> str | None:
        """Acc_t's excluded examples of a per-attack oblivious figure (``oblivious.<attack>.excluded``)."""
        return f"{OBLIVIOUS}.{self.attack}.excluded" if self.threat == OBLIVIOUS and self.attack else None

    @property
    def threat_text(self) -> str:
        """The threat model in a table cell's words (``oblivious``, ``adaptive (whole pipeline)``, ...)."""
        return _NO_ATTACK_WORDS.get(self.name, THREAT_WORDS[self.threat])

    @property
    def short(self) -> str:
        """A short row name: the attack of a per-attack figure, else e.g. ``worst unknown``."""
        return self.attack or _SHORT.get(self.name, self.name)

    @property
    def header(self) -> str:
        """A report column header that names the threat model."""
        if self.column is not None:
            return self.column
        if self.threat == NONE or self.label.endswith(")") or self.is_adaptive:
            return self.label
        return f"{self.label} ({self.threat})"


# ----------------------------------------------------------------------------- the named figures
CLEAN = "acc.clean"
RECONSTRUCTION = "acc.reconstruction"
WORST_UNKNOWN = "worst.unknown"
WORST_PER_SAMPLE = "worst.unknown_per_sample"
WORST_HOLDOUT = "worst.holdout"
PROBE = "probe.pgd_worst"  # the search's adaptive probe (sweeps.trial): cheap seeded PGD through M_t∘G∘E on val
WORST_WITH_PROBE = "worst.unknown_with_probe"  # min(worst.unknown, probe.pgd_worst) on val

_FIXED: tuple[Figure, ...] = (
    Figure(CLEAN, NONE, "clean: M_t(x), no attack, no defense"),
    Figure(RECONSTRUCTION, NONE, "reconstruction: M_t(G(E(x))), no attack"),
    Figure(WORST_UNKNOWN, OBLIVIOUS, "worst unknown attack (oblivious)"),
    Figure(WORST_PER_SAMPLE, OBLIVIOUS, "worst unknown, per sample (oblivious)"),
    Figure(WORST_HOLDOUT, OBLIVIOUS, "worst holdout attack (oblivious)"),
    # adaptive attacks on M_t∘G∘E (addd.adaptive), in the order rows come out
    Figure("adaptive.pgd_worst", ADAPTIVE, "PGD (adaptive, CE+margin)", "PGD adaptive on M_t∘G∘E (CE+margin)",
           oblivious_attack="PGDu"),
    Figure("adaptive.pgd_ce", ADAPTIVE, "PGD (adaptive, CE)", oblivious_attack="PGDu"),
    Figure("adaptive.pgd_margin", ADAPTIVE, "PGD (adaptive, margin)", oblivious_attack="PGDu"),
    Figure("adaptive.aa_linf", ADAPTIVE, "AutoAttack Linf (adaptive)", oblivious_attack="AA_Linf"),
    Figure("adaptive.aa_l2", ADAPTIVE, "AutoAttack L2 (adaptive)", oblivious_attack="AA_L2"),
    Figure("adaptive.bpda", ADAPTIVE, "BPDA (paper Sec 4.3)", oblivious_attack="PGDu"),
    # the search's figures on the validation split
    Figure(PROBE, ADAPTIVE, "adaptive probe: PGD on M_t∘G∘E (CE+margin, few steps, val subset)",
           "adaptive probe (val, PGD CE+margin through M_t∘G∘E)", oblivious_attack="PGDu", split=VAL),
    Figure(WORST_WITH_PROBE, ADAPTIVE, "worst unknown attack, the adaptive probe included (val)",
           "worst unknown incl. adaptive probe (val)", split=VAL),
)
FIGURES: dict[str, Figure] = {f.name: f for f in _FIXED}
_NO_ATTACK_WORDS = {CLEAN: "no attack, no defense", RECONSTRUCTION: "no attack, through the defense"}
_SHORT = {CLEAN: "clean", RECONSTRUCTION: "reconstruction", WORST_UNKNOWN: "worst unknown",
          WORST_PER_SAMPLE: "worst unknown (per sample)", WORST_HOLDOUT: "worst holdout"}
ADAPTIVE_FIGURES: tuple[str, ...] = tuple(f.name for f in _FIXED if f.is_adaptive and f.split is None)  # addd.adaptive's
WORST_FIGURES: tuple[str, ...] = (WORST_UNKNOWN, WORST_PER_SAMPLE, WORST_HOLDOUT)
# the rows of the report's overview, in order
SUMMARY_FIGURES: tuple[str, ...] = (CLEAN, RECONSTRUCTION, *WORST_FIGURES, "adaptive.pgd_worst")
# oblivious attack -> the adaptive figure shown beside it (same defense, norm and eps)
_BESIDE: dict[str, str] = {"PGDu": "adaptive.pgd_worst", "PGDt": "adaptive.pgd_worst", "AA_Linf": "adaptive.aa_linf",
                           "AA_L2": "adaptive.aa_l2"}
# the adaptive figures no oblivious attack has beside it: rows of their own in per-attack tables
ADAPTIVE_ALONE: tuple[str, ...] = ("adaptive.bpda", "adaptive.pgd_ce", "adaptive.pgd_margin")


def defended(attack: str) -> Figure:
    """The oblivious figure of one suite attack: M_t(G(E(x_adv))), x_adv computed on M_t."""
    return Figure(f"{DEFENDED_PREFIX}{attack}", OBLIVIOUS, attack, f"{attack} (oblivious)", attack=attack)


def undefended(attack: str) -> Figure:
    """The undefended figure of one suite attack: M_t(x_adv)."""
    return Figure(f"{UNDEFENDED_PREFIX}{attack}", UNDEFENDED, attack, f"{attack} (undefended)", attack=attack)


def figure(name: str) -> Figure:
    """The figure of a stable name (per-attack names are parsed); a miss lists the valid ones."""
    if name in FIGURES:
        return FIGURES[name]
    for prefix, make in ((DEFENDED_PREFIX, defended), (UNDEFENDED_PREFIX, undefended)):
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name[len(prefix):])
    raise FigureError(f"unknown figure {name!r}; valid: {', '.join(FIGURES)}, "
                      f"{DEFENDED_PREFIX}<attack>, {UNDEFENDED_PREFIX}<attack>")


def from_summary(section: str, key: str) -> Figure:
    """The figure stored under ``summary[...][section][key]``."""
    fig = figure(f"{ADAPTIVE_PREFIX}{key}" if section == ADAPTIVE_SECTION else key)
    if fig.section != section:
        raise FigureError(f"figure {fig.name!r} is stored in section {fig.section!r}, not {section!r}")
    return fig


def adaptive_beside(attack: str) -> Figure | None:
    """The adaptive figure shown beside an oblivious attack (same norm and eps), if there is one."""
    name = _BESIDE.get(attack)
    return FIGURES[name] if name else None


# an online known attack (addd.attack_names) -> the adaptive figures it makes *known* to a defense
# trained on it: PGDa is CE-loss PGD through M_t∘G∘E, so the CE run and the CE+margin worst case
# (and the search's probe) are no longer attacks the defense never saw; margin-only PGD, AutoAttack
# and BPDA stay unknown.
_TRAINED_ADAPTIVE: dict[str, tuple[str, ...]] = {
    "PGDa": ("adaptive.pgd_worst", "adaptive.pgd_ce", PROBE, WORST_WITH_PROBE),
}


def known_adaptive(known_attacks) -> frozenset[str]:
    """The adaptive figures a defense trained on ``known_attacks`` has seen its attack of (marked ``*``)."""
    return frozenset(name for attack in known_attacks for name in _TRAINED_ADAPTIVE.get(attack, ()))


def legend() -> dict[str, str]:
    """What each family of figures means, keyed by name pattern (summary.json's ``threat_models``)."""
    return {
        CLEAN: "no attack, no defense: M_t(x)",
        RECONSTRUCTION: "no attack, through the defense: M_t(G(E(x)))",
        f"{UNDEFENDED_PREFIX}<attack>": THREAT_MODELS[UNDEFENDED],
        f"{DEFENDED_PREFIX}<attack>": THREAT_MODELS[OBLIVIOUS],
        "worst.*": "oblivious: minimum over attacks of acc.defended (per attack, or per sample)",
        f"{ADAPTIVE_PREFIX}*": THREAT_MODELS[ADAPTIVE],
        **{f.name: f"{f.threat}: {f.label}" for f in FIGURES.values() if f.split is not None},
    }


def trial_metrics(values: Mapping[str, float], split: str = TEST) -> dict[str, float]:
    """A trial report's entries of stable-named ``values`` (``addd`` results' ``to_metrics()``)."""
    return {figure(name).trial_key(split): value for name, value in values.items()}


def parent_metrics(defense: str, entry: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """The parent run's means of a summary entry (``{"test": {...}, "adaptive": {...}}``)."""
    out: dict[str, float] = {}
    for section in (TEST, ADAPTIVE_SECTION, VAL):
        for key, stats in entry.get(section, {}).items():
            out[from_summary(section, key).parent_metric(defense)] = stats["mean"]
    return out
