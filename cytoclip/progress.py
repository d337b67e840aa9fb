"""The progress bar of every long step: ``tqdm.auto`` (a widget in JupyterLab, text in a terminal), with
``TQDM_DISABLE`` honoured everywhere.

The study runner sets ``TQDM_DISABLE=1`` so that executed notebooks (and the book) carry no progress output.
``tqdm.notebook`` turns an unset ``disable`` into ``False``, which overrides that variable, so with it set the
plain text class is used instead (it reads the variable, and is then silent).
"""

from __future__ import annotations

import os

if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
