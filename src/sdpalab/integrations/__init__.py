"""Bridges to other libraries. Each bridge imports its library where used, so a missing one fails
with the install command, and nothing here imports pydantic, optuna or torchao: the benchmark
scripts run these bridges on a bare GPU image (torch + transformers)."""
