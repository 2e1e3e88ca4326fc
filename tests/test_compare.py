"""The comparison harness on configs/tiny.py: 2 modes x 2 seeds, 4 steps."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from maskcon_jax import compare
from maskcon_jax import evaluate
from maskcon_jax import train_step
from maskcon_jax import trainer
from maskcon_jax.errors import UserError
from tests.conftest import REPO_ROOT

MODES = ["maskcon", "grafit:w=1.0"]
SEEDS = [3, 4]


def _config():
  config = tiny.get_config()
  config.num_epochs = 1  # 4 steps.
  config.lock()  # As the command line hands it over.
  return config


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("compare")
  rows = compare.run_comparison(_config(), MODES, str(workdir), SEEDS)
  return workdir, rows


def test_writes_table_plot_and_json(compared):
  workdir, rows = compared
  assert [r["label"] for r in rows] == ["maskcon", "grafit (w=1.0)"]
  assert [r["mode"] for r in rows] == ["maskcon", "grafit"]
  assert rows[1]["overrides"] == {"w": 1.0}
  assert json.loads((workdir / "comparison.json").read_text()) == rows

  table = (workdir / "comparison.md").read_text()
  body = [l for l in table.splitlines() if l.startswith("| ")]
  assert body[0].startswith("| mode | steps | fine R@1 | fine R@5 | fine R@10 "
                            "| kNN top-1 | fine MAP@R | linear probe "
                            "| wall time (s) |")
  assert [l.split(" | ")[0] for l in body[1:]] == ["| maskcon",
                                                   "| grafit (w=1.0)"]
  for line in body[1:]:
    cells = [c.strip() for c in line.strip("| ").split(" | ")]
    assert cells[1] == "4"  # One epoch of 64 examples at batch 16.
    # R@1, R@5, R@10, kNN, MAP@R, probe: mean ± std over 2 seeds.
    for cell in cells[2:8]:
      assert re.fullmatch(r"[01]\.\d{3} ± \d\.\d{3}", cell), line
    assert float(cells[8]) > 0
  assert "seeds 3, 4" in table

  from matplotlib import image
  png = image.imread(workdir / "comparison.png")
  assert png.ndim == 3 and png[..., :3].std() > 0.05


def test_rows_are_mean_and_sample_std_of_the_runs(compared):
  workdir, rows = compared
  for row, name in zip(rows, ("maskcon", "grafit_w=1.0")):
    assert [r["seed"] for r in row["runs"]] == SEEDS
    r1 = []
    for run, seed in zip(row["runs"], SEEDS):
      run_dir = workdir / name / f"seed_{seed}"
      assert run["workdir"] == str(run_dir)
      results = json.loads((run_dir / "results.json").read_text())
      saved = json.loads((run_dir / "config.json").read_text())
      assert saved["seed"] == seed and saved["mode"] == row["mode"]
      assert results["complete"] and results["step"] == 4
      report = json.loads((run_dir / "eval_test.json").read_text())
      assert run["fine_recall@1"] == results["fine_recall@1"]
      for key in ("knn_fine_top1", "fine_map@r", "linear_probe_fine_top1"):
        assert run[key] == report[key], key
      # tiny's retrieval_ks stop at 5; evaluate's report adds R@10.
      assert run["fine_recall@10"] == report["fine_recall@10"]
      r1.append(results["fine_recall@1"])
    assert row["fine_recall@1_mean"] == pytest.approx(np.mean(r1))
    assert row["fine_recall@1_std"] == pytest.approx(np.std(r1, ddof=1))
  grafit = json.loads((workdir / "grafit_w=1.0" / "seed_3" /
                       "config.json").read_text())
  assert grafit["w"] == 1.0


def test_rerun_skips_finished_runs(compared, monkeypatch):
  workdir, rows = compared

  def fail(*args, **kwargs):
    raise AssertionError("a finished run was trained or evaluated again")

  monkeypatch.setattr(trainer, "train_and_evaluate", fail)
  monkeypatch.setattr(evaluate, "run_evaluation", fail)
  assert compare.run_comparison(_config(), ",".join(MODES), str(workdir),
                                SEEDS) == rows


@pytest.mark.parametrize("spec,expected", [
    ("moco", ("moco", {})),
    ("grafit:w=1.0", ("grafit", {"w": 1.0})),
    (" maskcon : t=0.1 : w=0.8 ", ("maskcon", {"t": 0.1, "w": 0.8})),
    ("coins:precision=bfloat16:queue_init=random",
     ("coins", {"precision": "bfloat16", "queue_init": "random"})),
])
def test_parse_mode_spec(spec, expected):
  assert compare.parse_mode_spec(spec) == expected


def test_modes_are_read_at_run_time(monkeypatch):
  monkeypatch.setattr(train_step, "MODES", (*train_step.MODES, "newmode"))
  assert compare.parse_mode_spec("newmode:w=1") == ("newmode", {"w": 1})


@pytest.mark.parametrize("modes,seeds,message", [
    (["maskcon", "nope"], None, "unknown mode 'nope'.*available: maskcon"),
    (["grafit:w"], None, "'w' in 'grafit:w' is not FIELD=VALUE"),
    (["grafit:mode=moco"], None, "sets the mode twice"),
    (["grafit:nofield=1"], None, "config.nofield, which the config does not"),
    (["grafit:w=abc"], None, "w='abc', but that field takes float values"),
    (["grafit:batch_size=1.5"], None, "that field takes int values"),
    (["grafit:w=2"], None, "entry 'grafit:w=2': config.w=2.0 must lie in"),
    (["moco", "moco"], None, "name the same run"),
    ([], None, "--modes is empty"),
    (["moco"], [1, 1], "lists a seed twice"),
    (["moco"], ["x"], "'x' is not an integer"),
])
def test_user_errors_before_any_run(modes, seeds, message, tmp_path):
  with pytest.raises(UserError, match=message):
    compare.run_comparison(_config(), modes, str(tmp_path / "out"), seeds)
  assert not (tmp_path / "out").exists()


def test_method_option_the_config_file_leaves_out():
  # configs/tiny.py has no saliency fields; an entry may still set one, and
  # the other entries' configs stay exactly the file's.
  plan = compare._build_configs(
      _config(), ["moco", "saliency:saliency_strategy=mean:alpha=1.0"], [3])
  (moco,), (saliency,) = (runs for *_, runs in plan)
  assert "saliency_strategy" not in moco and "alpha" not in moco
  assert saliency.saliency_strategy == "mean" and saliency.alpha == 1.0
  assert saliency.saliency_grid is None  # The other options: defaults.


def test_cli_bad_mode_is_one_line_error(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "maskcon_jax.compare", "--config",
       "configs/tiny.py", "--modes", "maskcon,nope", "--workdir",
       str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "unknown mode 'nope'" in errors[0], out.stderr
  assert "Traceback" not in out.stderr
