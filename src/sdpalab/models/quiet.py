"""transformers' and torchao's own notices kept off the user's terminal while sdpalab loads and
runs a model: a compiled extension of torchao's that did not load, a keyword transformers is
renaming, a forward's deprecation warned through torch's ``Module.__call__`` (``return
forward_call(*args, **kwargs)``). They are about those libraries' internals, not about what
sdpalab measures. Scoped to the calls that load and run models, never set on import: a
library user's own filters and logging stay as they set them outside those calls.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LIBRARY_MODULES = r"(transformers|torchao|torch\.nn\.modules\.module)(\.|$)"
"""Where their warnings are attributed: their own modules, or the line of torch's
``Module.__call__`` that a model's forward warns through."""
LIBRARY_LOGGERS = ("transformers", "torchao", "torch.utils._pytree")
"""Their loggers (torch's ``_pytree`` warns when torchao registers its types)."""


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within: warnings from transformers, torchao and a model's forward ignored, as are
    deprecation notices (sdpalab's own code issues none), and those libraries' loggers at
    ``ERROR``. Restored on exit. Also a decorator."""
    with contextlib.suppress(ImportError):
        # transformers sets its logger's level when first imported: first, so ours holds
        import transformers  # noqa: F401
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=LIBRARY_MODULES)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
