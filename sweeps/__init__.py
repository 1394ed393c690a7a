"""Named ADD-Defense sweeps on Ray Tune, Optuna and MLflow; run with ``python sweeps/run.py``."""
