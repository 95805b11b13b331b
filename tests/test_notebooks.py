"""Every notebook runs top to bottom, and is stored with the outputs of such a run (so a
reader sees the figures without running it): executed in order, no error among them.

Cells run in one namespace, in order, as a kernel would (the install cell finds jann
installed and says so); shell lines (`!...`) and IPython magics are skipped. Plots go
to matplotlib's non-interactive backend.

A notebook that sets XLA_FLAGS (03_scale simulates 8 CPU devices) runs in a fresh Python
process instead: jax reads the flag only when it starts, and this process has already
started it.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FRESH_PROCESS_TIMEOUT_S = 600


def _code(cell) -> str:
    lines = "".join(cell["source"]).splitlines()
    return "\n".join(l for l in lines if not l.lstrip().startswith(("!", "%")))


def run_cells(path) -> None:
    """Run a notebook's code cells in one namespace, in order, as a kernel would."""
    path = pathlib.Path(path)
    nb = json.loads(path.read_text())
    namespace = {"__name__": "__main__"}
    try:
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                exec(compile(_code(cell), f"{path.name}[cell {i}]", "exec"), namespace)
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


def _needs_fresh_process(nb) -> bool:
    return any("XLA_FLAGS" in _code(c) for c in nb["cells"] if c["cell_type"] == "code")


def _run_in_fresh_process(path, cwd) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runner = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from test_notebooks import run_cells; run_cells(sys.argv[2])")
    try:
        proc = subprocess.run([sys.executable, "-c", runner, str(ROOT / "tests"), str(path)],
                              cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=FRESH_PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{path.name} ran past {FRESH_PROCESS_TIMEOUT_S} s\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, (f"{path.name} failed (exit {proc.returncode}):\n"
                                  f"{proc.stdout[-5000:]}\n{proc.stderr[-10000:]}")


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_functional.ipynb", "03_scale.ipynb",
            "04_choosing_an_index.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_colab_ready(path):
    """Colab starts bare: the first code cell installs jann (from a checkout in or above
    the notebook's folder or in ./jann, else from the package index, saying which), the
    same cell in every notebook."""
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    reference = json.loads(NOTEBOOKS[0].read_text())
    assert first == "".join(next(c for c in reference["cells"]
                                 if c["cell_type"] == "code")["source"])
    for words in ("pip", "install", "-e", "the package index", "pyproject.toml", "print("):
        assert words in first, words


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_is_stored_with_its_outputs(path, monkeypatch, tmp_path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c.get("execution_count") for c in code] == list(range(1, len(code) + 1)), \
        f"{path.name} is not stored as run top to bottom"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert outputs, f"{path.name} is stored without outputs"
    if "plt." in "".join("".join(c["source"]) for c in code):
        assert any("image/png" in o.get("data", {}) for o in outputs), \
            f"{path.name} plots but stores no figure"
    if _needs_fresh_process(nb):
        _run_in_fresh_process(path, tmp_path)
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_cells(path)
