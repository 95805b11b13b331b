"""Every notebook runs top to bottom (stored without outputs).

Cells run in one namespace, in order, as a kernel would; shell lines (`!pip ...`, the
Colab install cell) and IPython magics are skipped, since the package under test is
already installed.
"""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _code(cell) -> str:
    lines = "".join(cell["source"]).splitlines()
    return "\n".join(l for l in lines if not l.lstrip().startswith(("!", "%")))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_has_no_outputs(path, monkeypatch, tmp_path):
    nb = json.loads(path.read_text())
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs"), f"{path.name} cell {i} is stored with outputs"
        exec(compile(_code(cell), f"{path.name}[cell {i}]", "exec"), namespace)
