"""The evaluate and export tools on a run of configs/tiny.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from maskcon_jax import evaluate
from maskcon_jax import export
from maskcon_jax import trainer
from maskcon_jax.errors import UserError
from tests.conftest import REPO_ROOT

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with a finished tiny run (8 steps; checkpoints 4 and 8)."""
  workdir = tmp_path_factory.mktemp("tiny_run")
  trainer.train_and_evaluate(tiny.get_config(), str(workdir))
  return workdir


def _read_png(path):
  from matplotlib import image

  return image.imread(path)


def test_run_evaluation_writes_json_and_figures(trained):
  results = evaluate.run_evaluation(str(trained), "test", None, True)
  written = json.loads((trained / "eval_test.json").read_text())
  assert written == results
  assert results["step"] == 8 and results["split"] == "test"
  assert results["num_queries"] == 32
  # 32 test items: K values above 31 are left out.
  for k in (1, 2, 5, 10):
    for prefix in (
        "fine_recall",
        "coarse_recall",
        "fine_precision",
        "fine_within_coarse_recall",
    ):
      assert 0.0 <= results[f"{prefix}@{k}"] <= 1.0
  assert "fine_recall@50" not in results
  for key in (
      "fine_map@r",
      "knn_fine_top1",
      "linear_probe_fine_top1",
      "fine_recall@1/coarse=group 0",
      "fine_recall@1/coarse=group 1",
  ):
    assert 0.0 <= results[key] <= 1.0, key
  # Training's own evaluation scores the same features the same way.
  trained_results = json.loads((trained / "results.json").read_text())
  assert results["fine_recall@1"] == trained_results["fine_recall@1"]

  for name in ("tsne_test", "retrieval_test", "per_group_recall_test"):
    image = _read_png(trained / "figures" / f"{name}.png")
    assert image.ndim == 3 and min(image.shape[:2]) >= 300, name
    assert image[..., :3].std() > 0.05, name  # Not a blank canvas.
  # The figures are also TensorBoard images, under these tags.
  events = b"".join(
      (trained / f).read_bytes()
      for f in os.listdir(trained)
      if f.startswith("events.out")
  )
  for tag in (
      "eval_test/tsne",
      "eval_test/retrieval",
      "eval_test/per_group_recall",
  ):
    assert tag.encode() in events


def test_run_evaluation_train_split_at_a_checkpoint(trained):
  results = evaluate.run_evaluation(str(trained), "train", 4, False)
  assert results["step"] == 4 and results["num_queries"] == 64
  assert "fine_recall@50" in results and "fine_recall@100" not in results
  assert (trained / "eval_train.json").exists()
  with pytest.raises(UserError, match="no checkpoint for step 3"):
    evaluate.run_evaluation(str(trained), "test", 3, False)


def test_export_writes_npz(trained, tmp_path):
  out = tmp_path / "sub" / "emb"
  export.run_export(str(trained), "test", str(out))
  with np.load(out) as data:  # Written as named: no ".npz" appended.
    assert data["features"].shape[0] == 32 and data["features"].ndim == 2
    assert data["projections"].shape == (32, tiny.get_config().embed_dim)
    np.testing.assert_array_equal(data["image_ids"], np.arange(32))
    assert data["fine_labels"].shape == data["coarse_labels"].shape == (32,)
    assert list(data["fine_names"]) == [f"pattern {i}" for i in range(8)]
    assert list(data["coarse_names"]) == ["group 0", "group 1"]
    np.testing.assert_array_equal(
        data["fine_to_coarse"][data["fine_labels"]], data["coarse_labels"]
    )
    assert int(data["step"]) == 8


def test_cli_missing_workdir_is_one_line_error(tmp_path):
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "maskcon_jax.evaluate",
          "--workdir",
          str(tmp_path / "nothing"),
      ],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "not found" in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
