"""Paired bootstrap of accuracy differences between two defenses (other − full).

Every defense of a study is evaluated on the same test examples and re-run over the same seed
indices, so the difference of a figure is resampled PAIRED: one bootstrap replicate draws the
seeds (with replacement, from the seeds both defenses have) and the test examples (with
replacement, one draw shared by every seed: the test set is one sample of the population) and
recomputes the figure for both defenses on that draw. The 95% interval is the 2.5 / 97.5
percentile of the replicated differences; a difference whose interval contains 0 is "within
noise".

Figures are computed from per-example indicators exactly as ``addd.evaluate`` computes them:

- ``acc.defended.<attack>``: Acc_u, or Acc_t for a targeted attack:
  ``Σ correct∧¬excluded / Σ ¬excluded`` (``excluded`` = Acc_t's num_r examples);
- ``worst.unknown`` / ``worst.holdout``: per seed, the minimum over those attacks of that;
- ``worst.unknown_per_sample``: robust under every unknown attack and excluded by none, over the
  examples not excluded by all of them;
- ``adaptive.<metric>``: plain accuracy on the first n test examples.

The per-example arrays come from ``finals/<defense>-seed<k>/per_example.safetensors`` (keys
``y``, ``oblivious.<attack>.correct``, ``oblivious.<attack>.excluded``, ``adaptive.<m>.correct``).
Vectorised numpy; seeded (``seed``), so the same inputs give the same interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from addd import figures as F
from addd.attack_names import ATTACK_NAMES
from addd.errors import AdddError

N_BOOT = 2000
LEVEL = 0.95
_CHUNK = 250  # bootstrap replicates per matrix product (bounds memory on large test sets)

SeedArrays = Mapping[str, np.ndarray]  # one seed's per-example arrays, keys as in per_example.safetensors


class StatsError(AdddError):
    """Inputs of a paired comparison do not fit together; the message says what to fix."""


@dataclass(frozen=True)
class Difference:
    """other − full for one figure, with its paired-bootstrap interval."""

    figure: str
    full: float  # the figure of full, mean over the paired seeds
    other: float
    difference: float  # other − full
    ci95: tuple[float, float]
    n_seeds: int
    n_examples: int
    n_boot: int
    verdict: str

    @property
    def within_noise(self) -> bool:
        lo, hi = self.ci95
        return bool(lo <= 0 <= hi) or not (np.isfinite(lo) and np.isfinite(hi))

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95), "within_noise": self.within_noise}


def load_seed_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """A final's per_example.safetensors as numpy arrays (bool masks, int labels)."""
    from addd.storage import load_tensors

    tensors, _ = load_tensors(path)
    return {k: v.numpy() for k, v in tensors.items()}


# ----------------------------------------------------------------------------- components
def components(arrays: SeedArrays, figure: str, known: Sequence[str] = (), holdout: Sequence[str] = ()
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """(numerator, denominator, reduce) indicators, each (A, N) float: the figure on example
    weights w is ``reduce_a (num[a]·w / den[a]·w)`` with reduce "min" (A = 1 for single attacks)."""
    attacks = sorted(a for a in ATTACK_NAMES if F.defended(a).per_example_key in arrays)
    try:
        fig = F.figure(figure)
    except F.FigureError:
        raise StatsError(f"no per-example definition of figure {figure!r}") from None

    def acc_t(attack: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            correct = np.asarray(arrays[F.defended(attack).per_example_key], bool)
        except KeyError:
            raise StatsError(f"no per-example result for attack {attack!r} (have {', '.join(attacks)})") from None
        excluded = np.asarray(arrays.get(F.defended(attack).excluded_key, np.zeros_like(correct)), bool)
        return correct & ~excluded, ~excluded

    if fig.threat == F.OBLIVIOUS and fig.attack is not None:
        num, den = acc_t(fig.attack)
        return num[None].astype(float), den[None].astype(float), "min"
    if fig.is_adaptive and fig.per_example_key is not None:
        if fig.per_example_key not in arrays:
            raise StatsError(f"no per-example result for {figure!r}")
        correct = np.asarray(arrays[fig.per_example_key], bool)
        return correct[None].astype(float), np.ones((1, len(correct))), "min"
    if figure in F.WORST_FIGURES:
        chosen = [a for a in attacks if a not in known] if figure != F.WORST_HOLDOUT else [a for a in holdout if a in attacks]
        if not chosen:
            raise StatsError(f"{figure}: no attack to take the worst over")
        pairs = [acc_t(a) for a in chosen]
        num = np.stack([p[0] for p in pairs]).astype(float)
        den = np.stack([p[1] for p in pairs]).astype(float)
        if figure != F.WORST_PER_SAMPLE:
            return num, den, "min"
        # robust: correct under all and excluded by none; counted: not excluded by all
        excluded = den == 0
        robust = np.all(num == 1, axis=0) & ~excluded.any(axis=0)
        counted = ~excluded.all(axis=0)
        return robust[None].astype(float), counted[None].astype(float), "min"
    raise StatsError(f"no per-example definition of figure {figure!r}")


def _stack(seeds: Sequence[SeedArrays], figure: str, known, holdout, n: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [components(s, figure, known, holdout)[:2] for s in seeds]
    num = np.stack([p[0][:, :n] for p in parts])  # (S, A, n)
    den = np.stack([p[1][:, :n] for p in parts])
    return num, den


def _figure_values(num: np.ndarray, den: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S, A, N) x (B, N) -> (S, B): min over attacks of the weighted ratio, NaN where undefined."""
    top = num @ weights.T  # (S, A, B)
    bottom = den @ weights.T
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)
    return ratio.min(axis=1)


def draws(rng: np.random.Generator, n_boot: int, n_seeds: int, n_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap's index draws: seeds (B, S) and examples (B, N), with replacement."""
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds)), rng.integers(0, n_examples, size=(n_boot, n_examples))


def _counts(index: np.ndarray, size: int) -> np.ndarray:
    """(B, k) indices -> (B, size) how often each was drawn."""
    rows = np.repeat(np.arange(len(index)), index.shape[1])
    out = np.zeros((len(index), size))
    np.add.at(out, (rows, index.ravel()), 1.0)
    return out


def paired_difference(
    full: Mapping[int, SeedArrays],
    other: Mapping[int, SeedArrays],
    figure: str,
    *,
    known_full: Sequence[str] = (),
    known_other: Sequence[str] = (),
    holdout: Sequence[str] = (),
    n_boot: int = N_BOOT,
    seed: int = 0,
    reference: str = "full",
) -> Difference:
    """other − full for ``figure`` over the seeds both have (paired by seed index) and the test
    examples (paired by index; adaptive figures on the common first n), with the percentile
    interval of a paired bootstrap (see the module docstring). ``known_*``: each defense's known
    attacks (its unknown attacks are the rest); ``holdout``: the fixed holdout set."""
    common = sorted(set(full) & set(other))
    if not common:
        raise StatsError(f"{figure}: no seed in common (full has {sorted(full)}, the other {sorted(other)})")
    a = [full[s] for s in common]
    b = [other[s] for s in common]
    ys = [np.asarray(s["y"]) for s in (*a, *b) if "y" in s]
    if ys and any(len(y) != len(ys[0]) or not np.array_equal(y, ys[0]) for y in ys):
        raise StatsError(f"{figure}: the defenses were not evaluated on the same test examples (labels differ)")
    n = min(components(s, figure, k, holdout)[0].shape[1] for s, k in ((a[0], known_full), (b[0], known_other)))
    num_f, den_f = _stack(a, figure, known_full, holdout, n)
    num_o, den_o = _stack(b, figure, known_other, holdout, n)
    ones = np.ones((1, n))
    point_f = float(np.nanmean(_figure_values(num_f, den_f, ones)))
    point_o = float(np.nanmean(_figure_values(num_o, den_o, ones)))
    rng = np.random.default_rng(seed)
    seed_idx, example_idx = draws(rng, n_boot, len(common), n)
    diffs = np.empty(n_boot)
    for begin in range(0, n_boot, _CHUNK):
        end = min(n_boot, begin + _CHUNK)
        w = _counts(example_idx[begin:end], n)  # (b, n)
        v = _counts(seed_idx[begin:end], len(common)) / len(common)  # (b, S)
        f = np.einsum("bs,sb->b", v, np.nan_to_num(_figure_values(num_f, den_f, w), nan=0.0))
        o = np.einsum("bs,sb->b", v, np.nan_to_num(_figure_values(num_o, den_o, w), nan=0.0))
        diffs[begin:end] = o - f
    lo, hi = np.percentile(diffs, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    d = point_o - point_f
    return Difference(figure, point_f, point_o, d, (float(lo), float(hi)), len(common), n, n_boot,
                      verdict(d, (float(lo), float(hi)), reference))


def verdict(difference: float, ci95: tuple[float, float], reference: str = "full") -> str:
    """Plain words: "within noise" when the interval contains 0, else which way and by how much
    against ``reference`` (the defense the difference is taken from)."""
    lo, hi = ci95
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not enough data for an interval"
    if lo <= 0 <= hi:
        return f"within noise (95% interval [{lo:+.3f}, {hi:+.3f}] contains 0)"
    way = "higher" if difference > 0 else "lower"
    return f"{abs(difference):.3f} {way} than {reference} (95% interval [{lo:+.3f}, {hi:+.3f}] excludes 0)"
