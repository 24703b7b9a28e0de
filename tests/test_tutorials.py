"""Every tutorial runs as a plain script (non-interactive matplotlib) and saves its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("[0-9]*.py"))


def test_there_are_tutorials():
    assert TUTORIALS


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_runs_and_saves_figures(script, tmp_path):
    environment = {**os.environ, "MPLBACKEND": "Agg", "REFDYN_FIGURES": str(tmp_path)}
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                               env=environment, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), "the tutorial saved no figure"


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_is_a_jupytext_percent_script(script):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(script)
    assert notebook.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    assert any(cell.cell_type == "markdown" for cell in notebook.cells)
