"""Every mode's train step is bit-identical to the stored fixture.

tests/data/step_identity.json holds, for each mode on 1 and 8 (fake CPU)
devices, the metrics of three steps of configs/tiny.py and a digest of every
array of the state after them, written by tests/data/make_step_fixture.py
from the code before the methods became plug-ins (issue 13). A refactor that
changes nothing keeps them; one that changes a number fails here.
"""

import json

import jax
import pytest

from tests.data import make_step_fixture as fixture

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
def test_step_is_bit_identical_on_1_and_8_devices(mode):
  for n in fixture.DEVICE_COUNTS:
    want = STORED["runs"][f"{mode}/{n}"]
    got = fixture.run_mode(mode, n)
    assert got["metrics"] == want["metrics"], f"{mode} on {n} device(s)"
    assert set(got["state"]) == set(want["state"])
    for group in want["state"]:
      differ = sorted(
          name
          for name in set(want["state"][group]) | set(got["state"][group])
          if want["state"][group].get(name) != got["state"][group].get(name)
      )
      assert not differ, (
          f"{mode} on {n} device(s): {group} differs at "
          f"{', '.join(differ[:5])}"
      )
