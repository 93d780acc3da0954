"""Progress bars that read well in a terminal, a notebook and a papermill log.

``tqdm.auto`` picks the notebook widget inside Jupyter (papermill included)
and the text bar elsewhere. When stderr is not a terminal (CI, ``> log``),
the bar refreshes at most every 30 s, so logs get a few lines, not a flood.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, total=None, desc=None, initial=0, leave=True, disable=False):
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    in_notebook = "ipykernel" in sys.modules
    mininterval = 0.5 if (interactive or in_notebook) else 30.0
    return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, disable=disable,
                mininterval=mininterval, dynamic_ncols=True, smoothing=0.1)
