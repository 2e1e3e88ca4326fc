"""The comparison harness on configs/tiny.py: 3 entries x 2 seeds, 4 steps."""

import json
import re
import shutil
import subprocess
import sys

from absl import flags
import jax
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import compare
from maskcon_jax import compare_report
from maskcon_jax import configuration
from maskcon_jax import evaluate
from maskcon_jax import methods
from maskcon_jax import monitors
from maskcon_jax import trainer
from maskcon_jax.errors import UserError
from tests import test_compare_report
from tests.conftest import REPO_ROOT

MODES = ["maskcon", "grafit:w=1.0", "untrained"]
SEEDS = [3, 4]
METRIC_KEYS = [key for key, _ in compare.METRICS]


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


def _fail(*args, **kwargs):
  raise AssertionError("a finished run was trained or evaluated again")


def _no_runs(monkeypatch):
  for module, name in (
      (trainer, "train_and_evaluate"),
      (trainer, "evaluate_untrained"),
      (evaluate, "run_evaluation"),
  ):
    monkeypatch.setattr(module, name, _fail)


def _table_lines(table):
  """The first table's header and rows."""
  lines = table.splitlines()
  end = lines.index("")
  return [l for l in lines[:end] if l.startswith("| ")]


@pytest.mark.slow
def test_writes_table_plot_and_json(compared):
  workdir, rows = compared
  assert [r["label"] for r in rows] == [
      "maskcon",
      "grafit (w=1.0)",
      "untrained",
  ]
  assert [r["mode"] for r in rows] == ["maskcon", "grafit", "untrained"]
  assert rows[1]["overrides"] == {"w": 1.0}
  assert [r["spec"] for r in rows] == MODES
  assert json.loads((workdir / "comparison.json").read_text()) == rows

  table = (workdir / "comparison.md").read_text()
  body = _table_lines(table)
  assert body[0] == (
      "| mode | steps | fine R@1 | fine R@5 | fine R@10 "
      "| kNN top-1 | fine MAP@R | linear probe "
      "| wall time (s) | Δ R@1 vs maskcon (± SE) |"
  )
  assert [l.split(" | ")[0] for l in body[1:]] == [
      "| maskcon",
      "| grafit (w=1.0)",
      "| untrained",
  ]
  for line, steps in zip(body[1:], ("4", "4", "0")):
    cells = [c.strip() for c in line.strip("| ").split(" | ")]
    assert cells[1] == steps  # One epoch of 64 examples at batch 16.
    # R@1, R@5, R@10, kNN, MAP@R, probe: mean ± std over 2 seeds.
    for cell in cells[2:8]:
      assert re.fullmatch(r"[01]\.\d{3} ± \d\.\d{3}", cell), line
    assert float(cells[8]) > 0
  assert body[1].endswith("| reference |")
  for line in body[2:]:
    assert re.search(r"\| [+-]\d\.\d{3} ± \d\.\d{3} \|$", line), line
  assert "seeds 3, 4" in table
  assert f"per seed, on {compare.machine_description()}." in table
  assert "untrained: the freshly initialised encoder" in table
  # The second table: every metric's paired difference to the reference.
  paired = table[table.index("Paired differences to maskcon") :]
  paired_rows = [l for l in paired.splitlines() if l.startswith("| ")]
  assert paired_rows[0] == (
      "| mode | seeds paired | Δ fine R@1 | Δ fine R@5 "
      "| Δ fine R@10 | Δ kNN top-1 | Δ fine MAP@R "
      "| Δ linear probe |"
  )
  assert paired_rows[1].startswith("| maskcon |  | reference |")
  assert paired_rows[2].startswith("| grafit (w=1.0) | 2 | ")

  from matplotlib import image

  png = image.imread(workdir / "comparison.png")
  assert png.ndim == 3 and png[..., :3].std() > 0.05


@pytest.mark.slow
def test_rows_are_mean_and_sample_std_of_the_runs(compared):
  workdir, rows = compared
  for row, name in zip(rows, ("maskcon", "grafit_w=1.0", "untrained")):
    assert [r["seed"] for r in row["runs"]] == SEEDS
    r1 = []
    for run, seed in zip(row["runs"], SEEDS):
      run_dir = workdir / name / f"seed_{seed}"
      assert run["workdir"] == str(run_dir)
      assert run["machines"] == [compare.machine_description()]
      results = json.loads((run_dir / "results.json").read_text())
      saved = json.loads((run_dir / "config.json").read_text())
      assert saved["seed"] == seed
      assert results["complete"]
      if row["mode"] == "untrained":
        # The architecture of the shared config's mode, never trained.
        assert saved["mode"] == "maskcon" and results["mode"] == "untrained"
        assert results["step"] == 0 and results["train_seconds_this_run"] == 0
      else:
        assert saved["mode"] == results["mode"] == row["mode"]
        assert results["step"] == 4
      report = json.loads((run_dir / "eval_test.json").read_text())
      assert report["step"] == results["step"]
      assert run["fine_recall@1"] == results["fine_recall@1"]
      for key in ("knn_fine_top1", "fine_map@r", "linear_probe_fine_top1"):
        assert run[key] == report[key], key
      # tiny's retrieval_ks stop at 5; evaluate's report adds R@10.
      assert run["fine_recall@10"] == report["fine_recall@10"]
      r1.append(results["fine_recall@1"])
    assert row["fine_recall@1_mean"] == pytest.approx(np.mean(r1))
    assert row["fine_recall@1_std"] == pytest.approx(np.std(r1, ddof=1))
  grafit = json.loads(
      (workdir / "grafit_w=1.0" / "seed_3" / "config.json").read_text()
  )
  assert grafit["w"] == 1.0


@pytest.mark.slow
def test_rows_hold_paired_differences_to_the_reference(compared):
  _, rows = compared
  assert [r["reference"] for r in rows] == ["maskcon"] * 3
  assert [r["is_reference"] for r in rows] == [True, False, False]
  for key in METRIC_KEYS:
    assert rows[0][f"{key}_delta_mean"] is None
    reference = [r[key] for r in rows[0]["runs"]]
    for row in rows[1:]:
      mean, se, n = test_compare_report.numpy_paired(
          [r[key] for r in row["runs"]], reference
      )
      assert row[f"{key}_delta_n"] == n == 2, key
      assert row[f"{key}_delta_mean"] == pytest.approx(mean, abs=1e-12), key
      assert row[f"{key}_delta_se"] == pytest.approx(se, abs=1e-12), key


@pytest.mark.slow
def test_untrained_row_is_the_initial_state(compared):
  workdir, rows = compared
  run_dir = workdir / "untrained" / "seed_4"
  config = _config().copy_and_resolve_references()
  config.seed = 4
  exp = trainer.build_experiment(config)
  direct = monitors.evaluate(exp.state, exp.dataset, config, exp.embedder)
  results = json.loads((run_dir / "results.json").read_text())
  for key, value in direct.items():
    assert results[key] == pytest.approx(value, abs=1e-6), key
  assert rows[2]["runs"][1]["fine_recall@1"] == results["fine_recall@1"]
  # Its checkpoint 0 is that state, as maskcon_jax.evaluate loads it.
  _, restored = trainer.load_trained(str(run_dir))
  assert int(restored.step) == 0
  for loaded, fresh in zip(
      jax.tree.leaves(restored.params), jax.tree.leaves(exp.state.params)
  ):
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(fresh))


@pytest.mark.slow
def test_untrained_refuses_a_trained_workdir(compared, tmp_path):
  workdir, _ = compared
  run_dir = tmp_path / "trained"
  shutil.copytree(workdir / "maskcon" / "seed_3", run_dir)
  config = _config().copy_and_resolve_references()
  config.seed = 3
  with pytest.raises(
      UserError,
      match=r"holds checkpoints of training "
      r"\(steps 4\); evaluate the untrained encoder in a new",
  ):
    trainer.evaluate_untrained(config, str(run_dir))
  assert json.loads((run_dir / "results.json").read_text())["mode"] == "maskcon"


@pytest.mark.slow
def test_a_run_resumed_elsewhere_names_both_machines(tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  # Time spent on another machine before (the run did not finish there).
  (run_dir / compare.TIMING_FILE).write_text(
      json.dumps(
          {"wall_seconds": 5.0, "eval_seconds": 0.0, "machines": ["other"]}
      )
  )
  run = compare._train_one(_config(), str(run_dir), False, untrained=True)
  assert run["machines"] == ["other", compare.machine_description()]
  assert run["wall_seconds"] > 5.0


@pytest.mark.slow
def test_rerun_skips_finished_runs(compared, monkeypatch):
  workdir, rows = compared
  _no_runs(monkeypatch)
  assert (
      compare.run_comparison(_config(), ",".join(MODES), str(workdir), SEEDS)
      == rows
  )


@pytest.mark.slow
def test_finished_runs_saved_without_the_optional_fields_stay_finished(
    compared, monkeypatch
):
  # The command line now adds the optional fields (as maskcon_jax.train);
  # runs saved without them are the same runs.
  workdir, rows = compared
  config = _config()
  configuration.add_defaults(config)
  assert "saliency" in config and "saliency" not in _config()
  run_dir = str(workdir / "maskcon" / "seed_3")
  run_config = config.copy_and_resolve_references()
  run_config.seed = 3
  assert compare._is_finished(run_dir, run_config)
  # Another method's block is not this run's: the same run.
  run_config.saliency.alpha = 1.0
  assert compare._is_finished(run_dir, run_config)
  run_config.t = 0.2  # Another value of its own: another run.
  assert not compare._is_finished(run_dir, run_config)
  _no_runs(monkeypatch)
  assert compare.run_comparison(config, MODES, str(workdir), SEEDS) == rows


@pytest.mark.slow
def test_reference_names_an_entry(compared, tmp_path, monkeypatch):
  workdir, rows = compared
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  _no_runs(monkeypatch)
  for reference in ("grafit:w=1.0", "grafit (w=1.0)", " grafit:w=1 "):
    again = compare.run_comparison(
        _config(), MODES, str(copy), SEEDS, reference=reference
    )
    assert [r["is_reference"] for r in again] == [False, True, False]
    assert again[0]["fine_recall@1_delta_mean"] == pytest.approx(
        -rows[1]["fine_recall@1_delta_mean"], abs=1e-12
    )
  assert (
      "Δ R@1 vs grafit (w=1.0) (± SE)" in (copy / "comparison.md").read_text()
  )


@pytest.mark.parametrize(
    "modes,expected",
    [
        (["maskcon", "moco"], 0),
        (["moco", "untrained", "maskcon:w=1.0"], 2),
        (["moco", "grafit"], 0),
    ],
)
def test_default_reference_is_the_first_maskcon_entry(modes, expected):
  cells = [cell for spec in modes for cell in compare.expand_mode_spec(spec)]
  assert compare._reference_index(cells, None) == expected


@pytest.mark.parametrize(
    "reference,message",
    [
        (
            "coins",
            "--reference='coins' is none of the --modes entries; name one "
            "of: maskcon, grafit:w=1.0",
        ),
        ("maskcon:w=0.5|1.0", "is none of the --modes entries"),
    ],
)
def test_bad_reference_before_any_run(reference, message, tmp_path):
  with pytest.raises(UserError, match=re.escape(message)):
    compare.run_comparison(
        _config(),
        ["maskcon", "grafit:w=1.0"],
        str(tmp_path / "out"),
        reference=reference,
    )
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("moco", ("moco", {})),
        ("grafit:w=1.0", ("grafit", {"w": 1.0})),
        (" maskcon : t=0.1 : w=0.8 ", ("maskcon", {"t": 0.1, "w": 0.8})),
        (
            "coins:precision=bfloat16:queue_init=random",
            ("coins", {"precision": "bfloat16", "queue_init": "random"}),
        ),
        ("untrained", ("untrained", {})),
        (
            "untrained:mode=wcl:width=8",
            ("untrained", {"mode": "wcl", "width": 8}),
        ),
    ],
)
def test_parse_mode_spec(spec, expected):
  assert compare.parse_mode_spec(spec) == expected


def test_modes_are_read_at_run_time(monkeypatch):
  monkeypatch.setitem(methods.METHODS, "newmode", methods.get("moco"))
  assert compare.parse_mode_spec("newmode:w=1") == ("newmode", {"w": 1})


def test_grid_expands_to_the_cartesian_product():
  cells = compare.expand_mode_spec(" maskcon : w=0.5|1.0 : t=0.05 | 0.1 ")
  assert cells == [
      ("maskcon:w=0.5:t=0.05", "maskcon", {"w": 0.5, "t": 0.05}),
      ("maskcon:w=0.5:t=0.1", "maskcon", {"w": 0.5, "t": 0.1}),
      ("maskcon:w=1.0:t=0.05", "maskcon", {"w": 1.0, "t": 0.05}),
      ("maskcon:w=1.0:t=0.1", "maskcon", {"w": 1.0, "t": 0.1}),
  ]
  assert compare.expand_mode_spec("grafit:w=1.0|0.8:queue_init=random") == [
      (
          "grafit:w=1.0:queue_init=random",
          "grafit",
          {"w": 1.0, "queue_init": "random"},
      ),
      (
          "grafit:w=0.8:queue_init=random",
          "grafit",
          {"w": 0.8, "queue_init": "random"},
      ),
  ]
  # A single run keeps its text, and so its workdir name.
  assert compare.expand_mode_spec(" maskcon : t=0.1 ") == [
      ("maskcon : t=0.1", "maskcon", {"t": 0.1})
  ]


def test_grid_cells_are_runs_of_their_own():
  plan = compare._build_configs(
      _config(), ["maskcon:w=0.5|1.0:t=0.05|0.1", "untrained:width=4|8"], [3]
  )
  assert [(entry, name) for entry, _, _, _, name, _ in plan] == [
      ("maskcon:w=0.5|1.0:t=0.05|0.1", "maskcon_w=0.5_t=0.05"),
      ("maskcon:w=0.5|1.0:t=0.05|0.1", "maskcon_w=0.5_t=0.1"),
      ("maskcon:w=0.5|1.0:t=0.05|0.1", "maskcon_w=1.0_t=0.05"),
      ("maskcon:w=0.5|1.0:t=0.05|0.1", "maskcon_w=1.0_t=0.1"),
      ("untrained:width=4|8", "untrained_width=4"),
      ("untrained:width=4|8", "untrained_width=8"),
  ]
  labels = [
      compare.run_label(mode, overrides) for _, _, mode, overrides, _, _ in plan
  ]
  assert labels[0] == "maskcon (w=0.5, t=0.05)"
  assert labels[5] == "untrained (width=8)"
  configs = [runs[0] for *_, runs in plan]
  assert [(c.w, c.t) for c in configs[:4]] == [
      (0.5, 0.05),
      (0.5, 0.1),
      (1.0, 0.05),
      (1.0, 0.1),
  ]
  assert [(c.mode, c.width) for c in configs[4:]] == [
      ("maskcon", 4),
      ("maskcon", 8),
  ]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("maskcon:w=0.5|", "'w=0.5|' in 'maskcon:w=0.5|' has an empty value"),
        ("maskcon:w=|", "'w=|' in 'maskcon:w=|' has an empty value"),
        ("maskcon:w=|1.0", "has an empty value"),
        ("maskcon:w=0.5:w=1.0", "'maskcon:w=0.5:w=1.0' sets w twice"),
        ("maskcon:w=0.5|1.0:w=0.8", "sets w twice"),
        ("maskcon|moco", "'maskcon|moco' has '|' in its mode"),
        ("maskcon|moco:w=1.0", "has '|' in its mode"),
        ("maskcon:w=0.5|0.5", "lists '0.5' twice"),
        ("maskcon:w=1|1.0", "lists '1.0' twice"),
        ("moco:mode=grafit", "sets the mode twice"),
    ],
)
def test_bad_grid_syntax_is_one_line_error(spec, message):
  with pytest.raises(UserError, match=re.escape(message)) as error:
    compare.expand_mode_spec(spec)
  assert "\n" not in str(error.value)


def test_parse_mode_spec_refuses_a_grid():
  with pytest.raises(UserError, match="is a grid of several runs"):
    compare.parse_mode_spec("maskcon:w=0.5|1.0")


@pytest.mark.parametrize(
    "spec,name",
    [
        ("maskcon", "maskcon"),
        ("grafit:w=1.0", "grafit_w=1.0"),
        ("maskcon:w=0.5:t=0.05", "maskcon_w=0.5_t=0.05"),
        ("saliency:saliency_strategy=mean", "saliency_saliency_strategy=mean"),
        ("saliency:saliency.strategy=mean", "saliency_saliency.strategy=mean"),
        ("coins:retrieval_ks=(1, 2)", "coins_retrieval_ks=_1_2"),
        (":::", "run"),
    ],
)
def test_directory_name(spec, name):
  assert compare.directory_name(spec) == name


@pytest.mark.parametrize(
    "modes,seeds,message",
    [
        (
            ["maskcon", "nope"],
            None,
            "unknown mode 'nope'.*available: maskcon.*untrained",
        ),
        (["grafit:w"], None, "'w' in 'grafit:w' is not FIELD=VALUE"),
        (["grafit:mode=moco"], None, "sets the mode twice"),
        (
            ["grafit:nofield=1"],
            None,
            "config.nofield, which the config does not",
        ),
        (["grafit:w=abc"], None, "w='abc', but that field takes float values"),
        (["grafit:batch_size=1.5"], None, "that field takes int values"),
        (["grafit:w=2"], None, "entry 'grafit:w=2': config.w=2.0 must lie in"),
        (
            ["grafit:w=0.5|2"],
            None,
            "entry 'grafit:w=2': config.w=2.0 must lie in",
        ),
        (
            ["untrained:mode=nope"],
            None,
            "entry 'untrained:mode=nope': "
            "config.mode='nope' is not supported",
        ),
        (["moco", "moco"], None, "name the same run"),
        (
            ["maskcon:w=0.5|1.0", "maskcon:w=1.0"],
            None,
            re.escape(
                "entries 'maskcon:w=0.5|1.0' and 'maskcon:w=1.0' both hold the "
                "run 'maskcon:w=1.0'"
            ),
        ),
        ([], None, "--modes is empty"),
        (["moco"], [1, 1], "lists a seed twice"),
        (["moco"], ["x"], "'x' is not an integer"),
    ],
)
def test_user_errors_before_any_run(modes, seeds, message, tmp_path):
  with pytest.raises(UserError, match=message):
    compare.run_comparison(_config(), modes, str(tmp_path / "out"), seeds)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec",
    [
        "saliency:saliency.strategy=mean:saliency.alpha=1.0",
        # The flat names of older configs (and their workdirs) still work.
        "saliency:saliency_strategy=mean:alpha=1.0",
    ],
)
def test_method_option_the_config_file_leaves_out(spec):
  # configs/tiny.py has no saliency block; an entry may still set its
  # fields, and the other entries' configs stay exactly the file's.
  plan = compare._build_configs(_config(), ["moco", spec], [3])
  (moco,), (saliency,) = (runs for *_, runs in plan)
  assert "saliency" not in moco
  assert saliency.saliency.strategy == "mean"
  assert saliency.saliency.alpha == 1.0
  assert saliency.saliency.grid is None  # The other options: defaults.


def _parsed_flags(*args):
  """compare's flags parsed from ``args`` (config: configs/default.py)."""
  argv = ["compare", "--config=configs/default.py", "--workdir=/tmp/x", *args]
  flag_values = flags.FlagValues()
  compare.define_flags(flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values


def test_cli_flags_add_the_optional_fields():
  # As maskcon_jax.train: --config.FIELD may name a method option the config
  # file leaves out (configs/default.py has no saliency block).
  flag_values = _parsed_flags(
      "--config.saliency.alpha=1.0",
      "--modes=maskcon,moco",
      "--seeds=1,2",
      "--reference=moco",
  )
  assert flag_values.config.saliency.alpha == 1.0
  assert flag_values.config.saliency.strategy == "hp"  # Added, default.
  assert flag_values.reference == "moco"


def test_a_tuple_value_is_quoted_in_the_modes_list():
  flag_values = _parsed_flags(
      '--modes=moco,"saliency:saliency.query_ratio=(0.0,0.1)"'
  )
  moco, saliency = flag_values.modes
  assert moco == "moco"
  ((_, mode, overrides),) = compare.expand_mode_spec(saliency)
  assert mode == "saliency"
  assert overrides == {"saliency.query_ratio": (0.0, 0.1)}


@pytest.mark.slow
def test_cli_untrained_with_an_optional_field_and_one_line_errors(tmp_path):
  workdir = tmp_path / "out"
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "maskcon_jax.compare",
          "--config",
          "configs/tiny.py",
          "--config.mode=wcl",
          "--config.wcl.graph_weight=2",
          "--modes",
          "untrained",
          "--workdir",
          str(workdir),
          "--noevaluate",
      ],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  saved = json.loads(
      (workdir / "untrained" / "seed_1228" / "config.json").read_text()
  )
  # Only the mode's own block is recorded.
  assert saved["wcl"]["graph_weight"] == 2.0 and saved["mode"] == "wcl"
  assert "saliency" not in saved and "selfcon" not in saved
  assert "| untrained | 0 |" in out.stdout

  for modes, message in (
      ("maskcon,nope", "unknown mode 'nope'"),
      ("maskcon:w=0.5|", "has an empty value"),
  ):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskcon_jax.compare",
            "--config",
            "configs/tiny.py",
            "--modes",
            modes,
            "--workdir",
            str(tmp_path / "bad"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_entry_seeds_override_the_shared_seeds():
  """wcl:seeds=5 runs one seed of its own, in the folder --seeds would use,
  and the table then shows each row's seeds."""
  config = _config()
  plan = compare._build_configs(
      config, ["maskcon", "moco:seeds=5", "grafit:w=1.0:seeds=3+5"], [3, 4]
  )
  seeds = {cell: [int(c.seed) for c in runs] for _, cell, _, _, _, runs in plan}
  names = {cell: name for _, cell, _, _, name, _ in plan}
  assert seeds == {"maskcon": [3, 4], "moco": [5], "grafit:w=1.0": [3, 5]}
  assert names["moco"] == "moco" and names["grafit:w=1.0"] == "grafit_w=1.0"
  rows = [
      {
          "label": cell,
          "seeds": s,
          "steps": [1],
          "mode": cell,
          "wall_seconds_mean": 1.0,
          **{
              f"{k}_{stat}": 0.5
              for k, _ in compare.METRICS
              for stat in ("mean", "std")
          },
      }
      for cell, s in seeds.items()
  ]
  table = compare_report.markdown_table(rows)
  assert "| seeds |" in table.splitlines()[0] and "| 3, 5 |" in table
  for bad in ("moco:seeds=5|6", "moco:seeds=x", "moco:seeds=5+5"):
    with pytest.raises(UserError) as error:
      compare._build_configs(config, [bad], [3])
    assert "\n" not in str(error.value)
