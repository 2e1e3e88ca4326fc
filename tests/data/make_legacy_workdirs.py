r"""Writes tests/data/legacy_workdirs.*: runs saved before the config blocks.

  python tests/data/make_legacy_workdirs.py               # rewrites all
  python tests/data/make_legacy_workdirs.py --add-record  # this CPU's numbers

Written once with the code of commit e3f21ed (0cadfb0's training code),
before issue 13 moved the method fields into blocks
(``config.wcl.graph_weight`` was ``config.wcl_graph_weight``) and took the
unused key encoder and queue out of WCL's and SelfCon's state; it runs only
with that code (e.g. ``git archive e3f21ed`` unpacked elsewhere, running
this script from there). Each of `RUNS` trains 2 of the 4 steps of
configs/tiny.py (one epoch) from the command line with that time's flat
field names, set to values other than the defaults; the workdir keeps its
config.json, results.json and the step-2 checkpoint (the TensorBoard events
are dropped). ``legacy_workdirs.tar.xz`` holds the three workdirs (the
checkpoints' metadata is verbose JSON: packed, they take a third of the
space). ``legacy_workdirs.json`` records, for each run, the command-line
overrides, the backbone features of the test split at step 2 (as
`evaluate.load_and_embed` computes them) and what resuming a copy of the
workdir to step 4 gives: the sha256 of every parameter and BatchNorm
statistic, and the results. tests/test_legacy_workdirs.py resumes and
evaluates these workdirs with the current code and compares.

Those numbers are XLA:CPU's, whose last bits depend on the CPU and on how
far XLA optimises (tests/data/numerics.py), so the JSON keeps one record of
them per CPU and level: the first from the machine that wrote the archive
(CPU not recorded), fully optimised; the second and third from an AMD EPYC
Zen 4 (family 25 model 17), fully optimised and with most optimisations off
(``JAX_DISABLE_MOST_OPTIMIZATIONS=1``, the test suite's level), computed on
2026-12-01 from the stored archive by ``--add-record`` run with e3f21ed's
code (and a ``tests/data/fixture_env.py`` that set the same environment).
The two CPUs agree to 4.2e-7 in the features and the Zen 4's two levels to
3.4e-7, and all exactly in the results; the weights after resuming differ
in the last bits. ``--add-record`` computes at the level the environment
sets.
"""

from __future__ import annotations

import argparse

import json
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
# The tests' environment, before jax is imported.
from tests.data import fixture_env  # noqa: E402,F401  pylint: disable=unused-import

import jax  # noqa: E402
import numpy as np  # noqa: E402

from maskcon_jax import evaluate  # noqa: E402
from maskcon_jax import train  # noqa: E402
from maskcon_jax import trainer  # noqa: E402
from tests.data import numerics  # noqa: E402

ARCHIVE = ROOT / "tests" / "data" / "legacy_workdirs.tar.xz"
EXPECTED = ROOT / "tests" / "data" / "legacy_workdirs.json"
# Flat (pre-block) overrides of configs/tiny.py; WCL and SelfCon as their
# configs then set them (a random queue of one batch, never read).
# A smaller model than tiny.py's and one device keep the checkpoints small.
COMMON = dict(
    num_epochs=1,
    strong_policy="weak",
    width=2,
    embed_dim=8,
    proj_hidden_dim=16,
    num_devices=1,
)
RUNS = {
    "wcl": dict(
        mode="wcl",
        t0=0.1,
        query_bn="global",
        queue_size=16,
        queue_init="random",
        wcl_graph_weight=2.0,
        wcl_same_coarse_nn=True,
    ),
    "selfcon": dict(
        mode="selfcon",
        t0=0.1,
        queue_size=16,
        queue_init="random",
        selfcon_position=1,
        selfcon_size="small",
        selfcon_base_temperature=0.1,
        selfcon_label_free=True,
    ),
    "saliency": dict(
        mode="saliency",
        alpha=1.5,
        num_hard_negatives=2,
        saliency_strategy="hp",
        saliency_hp_sigma=0.5,
        saliency_grid=2,
        saliency_fg_rule="official",
        saliency_query_ratio=(0.1, 0.3),
    ),
}


def argv(workdir, overrides) -> list[str]:
  return [
      "maskcon_jax.train",
      "--config=configs/tiny.py",
      f"--workdir={workdir}",
      *(f"--config.{field}={value}" for field, value in overrides.items()),
  ]


def _train(workdir, overrides) -> None:
  status = train.command_line(argv(workdir, overrides))
  if status:
    raise SystemExit(f"training {workdir} failed ({status}).")


def _computed(workdir: pathlib.Path, overrides: dict) -> dict:
  """What the code at hand computes from a step-2 ``workdir``: its test
  features, and what resuming a copy of it to step 4 gives."""
  features = evaluate.load_and_embed(str(workdir), "test", with_bank=False)[
      "embeddings"
  ]
  with tempfile.TemporaryDirectory() as tmp:
    copy = os.path.join(tmp, workdir.name)
    shutil.copytree(workdir, copy)
    _train(copy, overrides)
    _, state = trainer.load_trained(copy)
    results = json.loads(
        (pathlib.Path(copy) / trainer.RESULTS_FILE).read_text()
    )
  return {
      "features": np.asarray(features["features"]).tolist(),
      "resumed": {
          "step": int(state.step),
          "params": numerics.digests(state.params),
          "batch_stats": numerics.digests(state.batch_stats),
          "results": results,
      },
  }


def _runs_from_archive() -> dict:
  """This CPU's runs, computed from the stored archive."""
  overrides = json.loads(EXPECTED.read_text())["overrides"]
  runs = {}
  with tempfile.TemporaryDirectory() as out:
    with tarfile.open(ARCHIVE) as archive:
      archive.extractall(out, filter="data")
    for name in RUNS:
      runs[name] = _computed(pathlib.Path(out) / name, overrides[name])
  return runs


def main(argv_=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--add-record",
      action="store_true",
      help="append this CPU's record (from the stored archive)",
  )
  if parser.parse_args(argv_).add_record:
    numerics.add_record(EXPECTED, {"jax": jax.__version__}, _runs_from_archive)
    return 0
  runs, all_overrides = {}, {}
  with tempfile.TemporaryDirectory() as out:
    for name, flat in RUNS.items():
      workdir = pathlib.Path(out) / name
      overrides = {**COMMON, **flat}
      _train(workdir, {**overrides, "stop_after_steps": 2})
      for path in list(workdir.iterdir()):
        if path.name.startswith("events.out.tfevents"):
          path.unlink()
      all_overrides[name] = overrides
      runs[name] = _computed(workdir, overrides)
    with tarfile.open(ARCHIVE, "w:xz") as archive:
      for name in RUNS:
        archive.add(pathlib.Path(out) / name, arcname=name)
  expected = {
      "versions": {"jax": jax.__version__},
      "overrides": all_overrides,
      "records": [numerics.record(runs)],
  }
  numerics.write_json(EXPECTED, expected)
  print(f"wrote {ARCHIVE} and {EXPECTED}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
