"""Plotting support for the tutorials and docs (matplotlib, from the ``plot`` extra, is only
imported by the code that draws)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

FIGURES_VARIABLE = "REFDYN_FIGURES"


def figure_directory(script: Optional[str] = None) -> Path:
    """Where a tutorial saves its figures, created if needed.

    ``$REFDYN_FIGURES`` when set; otherwise ``docs/figures`` of the repository holding the
    tutorial file ``script`` (pass ``__file__``); in a notebook, where there is no ``__file__``,
    ``../docs/figures`` of the working directory (the ``tutorials`` folder).
    """
    if os.environ.get(FIGURES_VARIABLE):
        directory = Path(os.environ[FIGURES_VARIABLE])
    else:
        tutorials = Path(script).resolve().parent if script else Path.cwd()
        directory = tutorials.parent / "docs" / "figures"
    directory.mkdir(parents=True, exist_ok=True)
    return directory
