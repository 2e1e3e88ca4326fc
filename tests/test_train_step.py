"""Every mode's train step is bit-identical to the stored fixture.

tests/data/step_identity.json holds, for each mode on 1 and 8 (fake CPU)
devices, the metrics of three steps of configs/tiny.py and a digest of every
array of the state after them, written by tests/data/make_step_fixture.py
from the code before the methods became plug-ins (issue 13), one record per
CPU and XLA optimisation level (XLA:CPU's last bits depend on both;
tests/data/numerics.py). A refactor that changes nothing keeps them; one
that changes a number fails here. On a CPU without a record only a
first-step tripwire is checked (`make_step_fixture.check_run`), and the test
says so in its output.
"""

import json

import jax
import numpy as np
import pytest

from tests.data import make_step_fixture as fixture
from tests.data import numerics

STORED = json.loads(fixture.FIXTURE.read_text())

pytestmark = [
    pytest.mark.skipif(
        jax.device_count() < max(fixture.DEVICE_COUNTS),
        reason="needs 8 (fake) devices; see conftest.py",
    ),
    pytest.mark.skipif(
        STORED["versions"] != fixture.versions(),
        reason=f"the fixture was written with {STORED['versions']}; XLA's "
        "numbers differ between releases (rewrite it with "
        "tests/data/make_step_fixture.py after checking a release change)",
    ),
    pytest.mark.slow,
]


@pytest.mark.parametrize("mode", fixture.MODES)
def test_step_is_bit_identical_on_1_and_8_devices(mode, capsys):
  with numerics.at_a_recorded_level(STORED["records"]):
    for n in fixture.DEVICE_COUNTS:
      key = f"{mode}/{n}"
      how, problems = fixture.check_run(STORED, key, fixture.run_mode(mode, n))
      assert not problems, f"{key} ({how}): " + "; ".join(problems)
      if how != "bits":
        with capsys.disabled():
          print(f"\n{key}: no record for this CPU, first step checked only")


# How the fixture is compared, on stored runs (no training).
_RECORDED = STORED["records"][-1]
_KEY = "maskcon/8"


def _as_if_recorded_here(monkeypatch, record):
  cpu, level = numerics.record_kind(record)
  monkeypatch.setattr(numerics, "cpu_identity", lambda: cpu)
  monkeypatch.setattr(numerics, "xla_optimisation", lambda: level)


def _changed(run, loss_factor=1.0, array=False):
  run = json.loads(json.dumps(run))
  step = run["metrics"][0]
  loss = np.frombuffer(bytes.fromhex(step["loss"]), np.float32) * loss_factor
  step["loss"] = loss.astype(np.float32).tobytes().hex()
  if array:
    name = sorted(run["state"]["params"])[0]
    run["state"]["params"][name] = "0" * 64
  return run


def test_a_recorded_cpu_requires_its_bits(monkeypatch):
  _as_if_recorded_here(monkeypatch, _RECORDED)
  run = _RECORDED["runs"][_KEY]
  assert fixture.check_run(STORED, _KEY, run) == ("bits", [])
  how, problems = fixture.check_run(STORED, _KEY, _changed(run, array=True))
  assert how == "bits" and problems == [
      f"params differs at {sorted(run['state']['params'])[0]}"
  ]
  # Another CPU's bits are not this CPU's.
  other = STORED["records"][0]["runs"][_KEY]
  how, problems = fixture.check_run(STORED, _KEY, other)
  assert how == "bits" and problems[0] == "metrics differ", problems
  # Nor are this CPU's bits at the other XLA optimisation level.
  (same_cpu,) = [
      r
      for r in STORED["records"]
      if r["cpu"] == _RECORDED["cpu"] and r is not _RECORDED
  ]
  how, problems = fixture.check_run(STORED, _KEY, same_cpu["runs"][_KEY])
  assert how == "bits" and problems[0] == "metrics differ", problems


def test_records_are_kept_per_cpu_and_level(monkeypatch):
  kinds = [numerics.record_kind(r) for r in STORED["records"]]
  assert len(set(kinds)) == len(kinds)
  for record in STORED["records"]:
    _as_if_recorded_here(monkeypatch, record)
    assert numerics.own_record(STORED["records"]) is record
  monkeypatch.setattr(numerics, "xla_optimisation", lambda: "another level")
  assert numerics.own_record(STORED["records"]) is None


def test_another_cpu_gets_bits_or_the_first_step_tripwire(monkeypatch):
  monkeypatch.setattr(numerics, "cpu_identity", lambda: "a CPU not recorded")
  for record in STORED["records"]:
    run = record["runs"][_KEY]
    assert fixture.check_run(STORED, _KEY, run) == ("bits", [])
  run = _RECORDED["runs"][_KEY]
  # Other bits, same first step: passes as far as can be told.
  assert fixture.check_run(STORED, _KEY, _changed(run, array=True)) == (
      "first step",
      [],
  )
  # A first-step loss 1e-3 off (relative) is a change of arithmetic.
  how, problems = fixture.check_run(STORED, _KEY, _changed(run, 1.001))
  assert how == "first step"
  assert len(problems) == len(STORED["records"]), problems
  assert all(p.startswith("first step's loss") for p in problems)


def test_a_cpu_without_a_record_at_this_level_compiles_fully_optimised(
    monkeypatch,
):
  level = numerics.xla_optimisation()
  monkeypatch.setattr(numerics, "cpu_identity", lambda: "a CPU not recorded")
  with numerics.at_a_recorded_level(STORED["records"]):
    assert numerics.xla_optimisation() == "full"
  assert numerics.xla_optimisation() == level
  # A CPU with a record at the running level keeps it.
  monkeypatch.setattr(numerics, "cpu_identity", lambda: _RECORDED["cpu"])
  assert numerics.own_record(STORED["records"]) is not None
  with numerics.at_a_recorded_level(STORED["records"]):
    assert numerics.xla_optimisation() == level
