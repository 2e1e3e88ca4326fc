"""Every notebook in colabs/ runs end to end on its tiny setting.

Each executes in a fresh IPython kernel (the ``python3`` kernel of this
interpreter, which ipykernel provides) from the repository root, with
``MASKCON_NOTEBOOK_TINY=1`` and its runs in a temporary folder. The kernel
inherits this session's environment: 8 fake CPU devices and the shared
compilation cache of tests/conftest.py.
"""

import json

import pytest

from tests.conftest import REPO_ROOT

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = ("quickstart", "custom_dataset", "compare_methods")
FIGURES = ("tsne_test", "retrieval_test", "per_group_recall_test")
# Per cell; the slowest cell trains or compares a few tiny runs.
CELL_TIMEOUT_S = 600


def _read(name):
  return nbformat.read(REPO_ROOT / "colabs" / f"{name}.ipynb", as_version=4)


def _execute(name, runs, monkeypatch):
  monkeypatch.setenv("MASKCON_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("MASKCON_NOTEBOOK_WORKDIR", str(runs))
  nb = _read(name)
  client = nbclient.NotebookClient(
      nb,
      timeout=CELL_TIMEOUT_S,
      kernel_name="python3",
      resources={"metadata": {"path": str(REPO_ROOT)}},
  )
  client.execute()  # Raises CellExecutionError naming the failing cell.
  return nb


def _displayed_pngs(nb):
  return sum(
      "image/png" in output.get("data", {})
      for cell in nb.cells
      if cell.cell_type == "code"
      for output in cell.outputs
  )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, name
  source = "\n".join(cell.source for cell in nb.cells)
  assert 'os.environ.get("MASKCON_NOTEBOOK_TINY") == "1"' in source


def test_quickstart_runs(tmp_path, monkeypatch):
  nb = _execute("quickstart", tmp_path, monkeypatch)
  workdir = tmp_path / "quickstart_tiny"
  results = json.loads((workdir / "results.json").read_text())
  assert results["complete"] and results["mode"] == "maskcon"
  report = json.loads((workdir / "eval_test.json").read_text())
  assert 0.0 <= report["knn_fine_top1"] <= 1.0
  for name in FIGURES:
    assert (workdir / "figures" / f"{name}.png").stat().st_size > 0
  assert _displayed_pngs(nb) == len(FIGURES)
  printed = "".join(
      output.get("text", "")
      for cell in nb.cells
      if cell.cell_type == "code"
      for output in cell.outputs
  )
  assert "linear_probe_fine_top1" in printed


def test_custom_dataset_runs(tmp_path, monkeypatch):
  nb = _execute("custom_dataset", tmp_path, monkeypatch)
  data = tmp_path / "shapes_tiny"
  assert len(list((data / "train").iterdir())) == 8
  assert (data / "coarse.csv").read_text().startswith("fine,coarse\n")
  workdir = tmp_path / "custom_tiny"
  results = json.loads((workdir / "results.json").read_text())
  assert results["complete"] and results["dataset"] == "folder"
  assert 0.0 <= results["fine_recall@1"] <= 1.0
  assert (workdir / "eval_test.json").exists()
  for name in FIGURES:
    assert (workdir / "figures" / f"{name}.png").stat().st_size > 0
  # The sample row of shapes, then the three figures.
  assert _displayed_pngs(nb) == 1 + len(FIGURES)


def test_compare_methods_runs(tmp_path, monkeypatch):
  nb = _execute("compare_methods", tmp_path, monkeypatch)
  workdir = tmp_path / "compare_tiny"
  table = (workdir / "comparison.md").read_text()
  for label in ("maskcon", "moco", "grafit (w=1.0)"):
    assert f"| {label} |" in table
  assert (workdir / "comparison.png").stat().st_size > 0
  rows = json.loads((workdir / "comparison.json").read_text())
  assert [row["mode"] for row in rows] == ["maskcon", "moco", "grafit"]
  assert _displayed_pngs(nb) == 1
