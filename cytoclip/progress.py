"""The progress bar of every long step: ``tqdm.auto``'s (a widget in JupyterLab, text in a terminal), with
``TQDM_DISABLE`` honoured everywhere.

The study runner sets ``TQDM_DISABLE=1`` so that executed notebooks (and the book) carry no progress output.
tqdm reads that variable only as the default of ``disable``: an explicit ``disable=False`` overrides it, and
``tqdm.notebook`` always passes one. So callers say ``enabled=...`` instead of ``disable=...``, and a hidden bar
(variable set, or ``enabled=False``) is a disabled plain tqdm. The variable is read at each call, not at import.
"""

from __future__ import annotations

import os
from typing import Any


def _env_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def tqdm(*args: Any, enabled: bool = True, **kwargs: Any):
    """A tqdm bar (same arguments); ``enabled=False`` hides it, ``TQDM_DISABLE`` hides every bar."""
    if _env_disabled() or not enabled:
        from tqdm.std import tqdm as bar  # no widget is built for a hidden bar

        kwargs["disable"] = True  # tqdm reads the variable once, when it is imported; this reads it now
    else:
        from tqdm.auto import tqdm as bar
    return bar(*args, **kwargs)


__all__ = ["tqdm"]
