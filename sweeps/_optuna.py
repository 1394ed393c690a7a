"""The one place that talks to Optuna: the seeded TPE searcher (through Ray's OptunaSearch), its
RDB study, and the study plots for the report. Open the study with
``optuna-dashboard sqlite:///<run folder>/optuna.db``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

from sweeps.spaces import Choice, Domain, LogUniform, Uniform

log = logging.getLogger(__name__)


def storage_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _distribution(domain: Domain):
    import optuna.distributions as d

    if isinstance(domain, LogUniform):
        return d.FloatDistribution(domain.low, domain.high, log=True)
    if isinstance(domain, Uniform):
        return d.FloatDistribution(domain.low, domain.high)
    if isinstance(domain, Choice):
        return d.CategoricalDistribution(list(domain.options))
    raise TypeError(f"no Optuna distribution for {domain!r}")


def _inside(domain: Domain, value) -> bool:
    if isinstance(domain, Choice):
        return value in domain.options
    return isinstance(value, (int, float)) and domain.low <= value <= domain.high


def _centre(domain: Domain):
    if isinstance(domain, Choice):
        return domain.options[0]
    if isinstance(domain, LogUniform):
        return (domain.low * domain.high) ** 0.5
    return (domain.low + domain.high) / 2


def make_searcher(
    *,
    url: str,
    study_name: str,
    search: Mapping[str, Domain],
    metric: str,
    seed: int,
    startup_trials: int,
    first_point: Mapping[str, Any] | None = None,
):
    """Ray's OptunaSearch with a seeded TPE sampler and the study stored at ``url`` (an RDB URL).

    ``first_point`` (e.g. the paper's weights) is tried first; keys it lacks, or whose value is
    outside the range, take the range's centre (geometric for log ranges).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = {key: _distribution(dom) for key, dom in search.items()}
    point = None
    if first_point is not None:
        given = {k: v for k, v in first_point.items() if k in space and _inside(search[k], v)}
        point = {k: given.get(k, _centre(dom)) for k, dom in search.items()}
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    return OptunaSearch(
        space=space,
        metric=metric,
        mode="max",
        sampler=sampler,
        study_name=study_name,
        storage=optuna.storages.RDBStorage(url),
        points_to_evaluate=[point] if point else None,
    )


def save_study_plots(url: str, study_name: str, out_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances as PNGs (importances need >= 2 finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=url)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for label, plot in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances)):
        path = out_dir / f"optuna_{label}_{study_name}.png"
        try:
            with warnings.catch_warnings():  # "experimental" and few-trials notices: not the user's concern
                warnings.simplefilter("ignore")
                ax = plot(study)
            ax.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
        except (ValueError, RuntimeError) as exc:  # e.g. too few finished trials for importances
            log.warning("no %s plot for study %s: %s", label, study_name, exc)
    return written
