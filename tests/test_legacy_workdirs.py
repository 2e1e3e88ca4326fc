"""Runs saved before the method blocks still evaluate, resume and compare.

tests/data/legacy_workdirs.tar.xz holds three runs of configs/tiny.py written
by the code of commit e3f21ed (tests/data/make_legacy_workdirs.py): WCL,
SelfCon and saliency, each with flat method fields (``wcl_graph_weight``,
``selfcon_position``, ``alpha``, ``saliency_strategy``, ...) set to other
values than the defaults in its config.json, and a step-2 checkpoint; the
WCL and SelfCon states still carry the key encoder and queue they never
used. tests/data/legacy_workdirs.json holds what that code computed from
them: the test split's features, and the weights after resuming to step 4.
"""

import json
import tarfile

import jax
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import compare
from maskcon_jax import configuration
from maskcon_jax import evaluate
from maskcon_jax import methods
from maskcon_jax import train
from maskcon_jax import trainer
from tests.data import make_legacy_workdirs as fixture
from tests.data import numerics

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

EXPECTED = json.loads(fixture.EXPECTED.read_text())
NAMES = ("wcl", "selfcon", "saliency")
# XLA's numbers (the features, the resumed weights) are compared only under
# the jax release that wrote them: bit for bit on a CPU with a record of
# them at the XLA optimisation level compiled at (tests/data/numerics.py;
# named in it, or recognised by computing its features bit for bit), and on
# another within what the two recorded CPUs differed by (features 4.2e-7 at
# most; results equal).
SAME_JAX = EXPECTED["versions"]["jax"] == jax.__version__
RECORDS = EXPECTED["records"]
FEATURES_ATOL = 1e-5


def _extract(tmp_path, name) -> str:
  with tarfile.open(fixture.ARCHIVE) as archive:
    members = [
        m
        for m in archive.getmembers()
        if m.name == name or m.name.startswith(f"{name}/")
    ]
    archive.extractall(tmp_path, members=members, filter="data")
  return str(tmp_path / name)


def _new_overrides(name) -> dict:
  """The run's overrides as today's command line names them: method fields
  in their block, and no queue fields for a method without a queue."""
  overrides = methods.move_legacy_fields(EXPECTED["overrides"][name])
  flat = {}
  for field, value in overrides.items():
    if isinstance(value, dict):
      flat.update({f"{field}.{k}": v for k, v in value.items()})
    elif methods.get(name).uses_queue or (
        field not in configuration.KEY_ENCODER_FIELDS
    ):
      flat[field] = value
  return flat


def _stored_features(record, name) -> np.ndarray:
  return np.asarray(record["runs"][name]["features"], np.float32)


def _record_for(name, features):
  """The record whose bits this machine computes: its CPU's, or else one
  whose features it reproduces bit for bit (a CPU that wrote a record but
  was not named in it); None if neither."""
  own = numerics.own_record(RECORDS)
  if own is not None:
    return own
  return next(
      (
          r
          for r in RECORDS
          if np.array_equal(features, _stored_features(r, name))
      ),
      None,
  )


@pytest.fixture(name="recorded_level")
def _recorded_level():
  """Compiles at a level this CPU's records can be compared at."""
  with numerics.at_a_recorded_level(RECORDS):
    yield


@pytest.mark.usefixtures("recorded_level")
@pytest.mark.parametrize("name", NAMES)
def test_old_run_evaluates_as_it_did(name, tmp_path):
  workdir = _extract(tmp_path, name)
  config = trainer.load_config(workdir)
  # The flat fields are read into the method's block.
  for field, value in _new_overrides(name).items():
    block, _, key = field.rpartition(".")
    if block:
      assert config[block][key] == value, field
  assert not set(methods.legacy_fields()) & set(config.keys())
  run = evaluate.load_and_embed(workdir, "test", with_bank=False)
  features = run["embeddings"]["features"]
  record = _record_for(name, features)
  if SAME_JAX and record:
    np.testing.assert_array_equal(features, _stored_features(record, name))
  elif SAME_JAX:
    for other in RECORDS:
      np.testing.assert_allclose(
          features, _stored_features(other, name), rtol=0, atol=FEATURES_ATOL
      )
  state = run["experiment"].state
  # WCL and SelfCon restore without the key encoder and queue they never
  # used.
  assert (state.queue_KxD is None) == (name != "saliency")


@pytest.mark.usefixtures("recorded_level")
@pytest.mark.parametrize("name", NAMES)
def test_old_run_resumes_to_the_same_weights(name, tmp_path, capsys):
  workdir = _extract(tmp_path, name)
  record = _record_for(
      name,
      evaluate.load_and_embed(workdir, "test", with_bank=False)["embeddings"][
          "features"
      ],
  )
  overrides = _new_overrides(name)
  status = train.command_line(
      [
          "maskcon_jax.train",
          "--config=configs/tiny.py",
          f"--workdir={workdir}",
          *(f"--config.{field}={value}" for field, value in overrides.items()),
      ]
  )
  assert status == 0, capsys.readouterr().err[-2000:]
  want = (record or RECORDS[0])["runs"][name]["resumed"]
  _, state = trainer.load_trained(workdir)
  assert int(state.step) == want["step"]
  assert (state.queue_KxD is None) == (not methods.get(name).uses_queue)
  results = json.loads((tmp_path / name / trainer.RESULTS_FILE).read_text())
  assert set(results) == set(want["results"])
  if SAME_JAX and record:  # Bit for bit what the old code's gave.
    assert numerics.digests(state.params) == want["params"]
    assert numerics.digests(state.batch_stats) == want["batch_stats"]
  if SAME_JAX:
    for key, value in want["results"].items():
      if key != "train_seconds_this_run":
        assert results[key] == pytest.approx(value, abs=1e-6), key
  # The run's record now names the fields in its block, and only its own.
  saved = json.loads((tmp_path / name / trainer.CONFIG_FILE).read_text())
  assert set(saved) & set(methods.blocks()) == {name}
  assert not set(methods.legacy_fields()) & set(saved)


@pytest.mark.parametrize("name", NAMES)
def test_compare_recognises_an_old_finished_run(name, tmp_path):
  workdir = _extract(tmp_path, name)
  config = tiny.get_config()
  configuration.add_defaults(config)
  for field, value in {**_new_overrides(name), "stop_after_steps": 2}.items():
    block, _, key = field.rpartition(".")
    (config[block] if block else config)[key] = value
  is_finished = compare._is_finished  # pylint: disable=protected-access
  assert is_finished(workdir, config)
  # A field of the method's own block still makes another run.
  field = {
      "wcl": "graph_weight",
      "selfcon": "base_temperature",
      "saliency": "alpha",
  }[name]
  config[name][field] = 0.5
  assert not is_finished(workdir, config)
