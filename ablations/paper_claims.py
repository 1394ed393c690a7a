"""The paper's MNIST figures as data: one frozen :class:`PaperClaim` per number the paper states.

Each claim names where it is printed (table, row, column), the paper's value, the threat model
the paper computed it under, what the paper's defense was trained on, and which figure of a
sweep's ``summary.json`` it is compared to (``<defense>`` = a variant, e.g. ``full``, or a
baseline key, e.g. ``ape_gan``; ``<figure>`` = ``acc.defended.STu``, ``adaptive.aa_linf``, ...).
A claim this project cannot measure keeps its row with ``not_measured`` saying why, so the
reproduction table lists it instead of dropping it. ``ablations.reproduction`` renders them.

Readings of the extracted paper text (``shared/paper/add-defense.txt``):

- Table 2's header reads "No attack, STu, STu, SFWu"; the issue and the text around it read the
  second ST column as targeted (STt). Its "Ori" row is the target model without a defense.
- Every figure of Tables 2, 5 and 7 is computed with attacks on the target model M_t, then
  restored by the defense: this project's *oblivious* threat model (as far as the paper says).
- Fig 3 (accuracy per attack) and Fig 5(a) (BPDA) give no numbers in the text; they are read
  off plots only and are not entered here.
"""

from __future__ import annotations

from dataclasses import dataclass

from addd import figures as F

THREAT_MODELS = {
    "oblivious": "attacks computed on M_t alone, then restored by the defense (the paper's Tables 1-2 setting)",
    "white-box": "attacks computed on the robust model itself (certified / adversarially trained models)",
}
PAPER_PGD = ("PGDu", "PGDt")  # Table 2's defenses are "trained on L∞-PGD" (ε 0.15, C.1)


class ClaimError(ValueError):
    """A claim is malformed (a bug in this table, not a user error)."""


@dataclass(frozen=True)
class PaperClaim:
    """One number the paper states, and the sweep figure that measures it (if any)."""

    table: str  # "Table 2"
    row: str  # the paper's row label, e.g. "ADD-Defense"
    column: str  # the paper's column label, e.g. "STu"
    paper_value: float  # accuracy in [0, 1], as printed
    threat_model: str  # a key of THREAT_MODELS: the paper's threat model for this figure
    paper_training: str  # what the paper's defense was trained on
    defense: str | None = None  # summary.json entry: a variant ("full") or a baseline key ("ape_gan")
    figure: str | None = None  # the oblivious figure of that entry, e.g. "acc.defended.STu"
    adaptive_figure: str | None = None  # the same attack on the whole pipeline, e.g. "adaptive.aa_linf"
    trained_on: tuple[str, ...] | None = None  # known attacks the paper's defense used, when the suite has them
    not_measured: str | None = None  # why this project cannot measure the claim (then no figure)

    def __post_init__(self) -> None:
        where = f"claim {self.source}"
        if not (self.table and self.row and self.column):
            raise ClaimError(f"{where}: table, row and column must all be named")
        if self.threat_model not in THREAT_MODELS:
            raise ClaimError(f"{where}: threat model {self.threat_model!r}; valid: {', '.join(THREAT_MODELS)}")
        if not 0.0 <= self.paper_value <= 1.0:
            raise ClaimError(f"{where}: paper value {self.paper_value} is not an accuracy in [0, 1]")
        measured = self.defense is not None and self.figure is not None
        if measured == (self.not_measured is not None):
            raise ClaimError(f"{where}: give either defense and figure, or not_measured with the reason")
        for name in (self.figure, self.adaptive_figure):
            if name is not None and name not in F.FIGURES and F.figure(name).attack is None:
                raise ClaimError(f"{where}: {name!r} is not a figure of addd.figures")
        if self.adaptive_figure is not None and not F.figure(self.adaptive_figure).is_adaptive:
            raise ClaimError(f"{where}: adaptive_figure must be an adaptive figure, got {self.adaptive_figure!r}")

    @property
    def source(self) -> str:
        return f"{self.table}, row {self.row}, column {self.column}"


def _table2(row: str, defense: str | None, values: tuple[float, float, float, float], *, not_measured: str | None = None,
            training: str = "L∞-PGD ε 0.15 (PGDu + PGDt)") -> list[PaperClaim]:
    """Table 2's four columns of one row: no attack, STu, STt, SFWu. ``defense`` None with
    ``target_model``: the undefended M_t, whose figures (acc.clean, acc.undefended.*) every
    entry of summary.json carries; they are read from ``full``."""
    target_model = defense is None and not_measured is None
    clean, per_attack = (F.CLEAN, F.undefended) if target_model else (F.RECONSTRUCTION, F.defended)
    measured = {"No attack": clean, "STu": per_attack("STu").name, "STt": per_attack("STt").name}
    claims = []
    for column, value in zip(("No attack", "STu", "STt", "SFWu"), values):
        reason = "the suite has no SFW attack (Wu et al., 2020)" if column not in measured else not_measured
        claims.append(PaperClaim(
            "Table 2", row, column, value, "oblivious", training,
            defense=None if reason else (defense or "full"), figure=None if reason else measured[column],
            trained_on=None if target_model or reason else PAPER_PGD, not_measured=reason))
    return claims


_ADD_S = ("ADD-Defense-S is trained on STu + PGDt; this suite computes ST only on val/test (C.1's ST costs "
          "4-8 s an image on a CPU thread), not on the training set")
_TABLE7 = ("App. G.3 trains on a different target (C&W / DDN adversarial images as the images to restore); "
           "this project's defenses restore the originals")
_OTHER_METHOD = "another method's white-box figure (no {0} model in this project); context for the 0.9765"

MNIST_CLAIMS: tuple[PaperClaim, ...] = (
    *_table2("Ori (target model)", None, (0.9889, 0.0025, 0.0, 0.3345), training="none (LeNet, no defense)"),
    *_table2("APE-GAN", "ape_gan", (0.9875, 0.7954, 0.7164, 0.8934)),
    *_table2("ADD-Defense", "full", (0.9867, 0.8930, 0.8736, 0.9274)),
    *_table2("ADD-Defense-S", None, (0.9798, 0.9348, 0.9206, 0.9368), not_measured=_ADD_S, training="STu + PGDt"),
    PaperClaim("Table 2 text (Sec 4.2)", "ADD-Defense-S", "PGDu", 0.9634, "oblivious", "STu + PGDt",
               not_measured=_ADD_S),
    PaperClaim("Table 2 text (Sec 4.2)", "ADD-Defense-S", "PGDt", 0.9749, "oblivious", "STu + PGDt",
               not_measured=_ADD_S),
    PaperClaim("Table 5", "Our (eps=0.3)", "MNIST-Linf (AutoAttack, ε 0.3)", 0.9765, "oblivious",
               "L∞-PGD ε 0.3 (this suite's PGD is C.1's ε 0.15)", defense="full", figure=F.defended("AA_Linf").name,
               adaptive_figure=F.adaptive_beside("AA_Linf").name, trained_on=PAPER_PGD),
    PaperClaim("Table 5", "CROWN", "MNIST-Linf (AutoAttack, ε 0.3)", 0.9396, "white-box", "CROWN-IBP",
               not_measured=_OTHER_METHOD.format("CROWN-IBP")),
    PaperClaim("Table 5", "IBP", "MNIST-Linf (AutoAttack, ε 0.3)", 0.9283, "white-box", "IBP",
               not_measured=_OTHER_METHOD.format("IBP")),
    PaperClaim("Table 7 (App. G.3)", "ADD-def", "C&W", 0.9544, "oblivious", "C&W images as the target",
               not_measured=_TABLE7),
    PaperClaim("Table 7 (App. G.3)", "ADD-def", "DDN", 0.9608, "oblivious", "DDN images as the target",
               not_measured=_TABLE7),
    PaperClaim("Table 7 (App. G.3)", "APE-def", "C&W", 0.6808, "oblivious", "C&W images as the target",
               not_measured=_TABLE7),
    PaperClaim("Table 7 (App. G.3)", "APE-def", "DDN", 0.7425, "oblivious", "DDN images as the target",
               not_measured=_TABLE7),
)

# dataset name (addd.data) -> the paper's claims measured on it; others have no paper figure
CLAIMS: dict[str, tuple[PaperClaim, ...]] = {"mnist": MNIST_CLAIMS, "mnist5k": MNIST_CLAIMS}


def claims_for(dataset: str) -> tuple[PaperClaim, ...]:
    """The paper's claims for ``dataset`` (empty when the paper has none entered for it)."""
    return CLAIMS.get(dataset, ())
