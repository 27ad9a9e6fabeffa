"""sdpalab inside Hugging Face transformers: the attention function (``attention.py``), the KV
cache (``cache.py``), loading models (``loading.py``), real text (``text.py``), quality through
a cache (``quality.py``) and measured generation (``generation.py``). transformers is imported
where used, so a missing one fails with the install command; nothing here imports pydantic,
optuna or torchao, so the benchmarks run it on a bare GPU image (torch + transformers)."""
