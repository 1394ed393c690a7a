"""The ablation report: tables and a Fig-12-style plot built from a sweep's ``summary.json``."""
