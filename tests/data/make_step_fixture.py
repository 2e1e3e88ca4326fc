r"""Writes tests/data/step_identity.json: every mode's train step, bit for bit.

  python tests/data/make_step_fixture.py          # rewrites the fixture
  python tests/data/make_step_fixture.py --check  # compares, writes nothing

For each mode (`MODES`) on 1 and on 8 (fake CPU) devices: `configs/tiny.py`
with ``mode`` set and, for wcl, selfcon and saliency, the fields their own
config (``configs/<mode>.py``) sets differently from ``configs/default.py``;
the experiment as the trainer builds it (`trainer.build_experiment`), the
queue pre-filled where the trainer pre-fills it, then `NUM_STEPS` jitted
train steps (`trainer.make_train_step`) on fixed batches of the tiny
synthetic dataset. Stored: every metric of every step as the hex of its
float32 bytes, and the sha256 of the bytes (with dtype and shape) of every
array of the state after the steps, by group (params, batch_stats,
opt_state, ... ; `state_groups`).

The values were written from the code of commit 0cadfb0, before the methods
moved to ``maskcon_jax/methods`` (issue 13), and must never change without a
reason: tests/test_train_step.py recomputes them and requires equality.
(Then configs/wcl.py and selfcon.py also set a one-batch random queue, which
those methods never read; they no longer carry one, so only the state's
other arrays are compared for them.)

XLA:CPU's results depend on the jax/jaxlib release, so the file records the
versions it was written with and the test is skipped under others. They
also depend, in the last bits, on the CPU and on how far XLA optimises
(tests/data/numerics.py), so the file holds one record per CPU and level it
was written on, each from 0cadfb0's code:
- the first: this project's x86-64 VM of 2026-11-30, whose CPU was not
  recorded (1 and 2 cores gave the same values), fully optimised;
- an AMD EPYC Zen 4 (family 25 model 17, AVX-512), fully optimised, written
  on 2026-12-01 by this script (``--add-record``) run in a checkout of
  0cadfb0, with a ``tests/data/fixture_env.py`` that set the same
  environment;
- the same CPU with most optimisations off (the test suite's level,
  ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``), written the same way on
  2026-12-01; today's code gave the same bits at both levels (14 of 14
  runs), and the two levels' bits differ.
On a CPU with a record at the running level the test requires that
record's bits; on a CPU with records only of fully optimised programs it
compiles fully optimised (`numerics.at_a_recorded_level`). On another CPU,
bits equal to some record pass; otherwise only a tripwire is left
(`check_run`): the first step's loss (and on one device its gradient norm
and positive similarity) within 1e-4 of every record's.
`--add-record` appends the running machine's record at the level the
environment sets (from the code at hand: run it in a checkout of the code
the fixture describes).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
# The tests' environment, before jax is imported.
from tests.data import fixture_env  # noqa: E402,F401  pylint: disable=unused-import

import jax  # noqa: E402
import jaxlib  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from configs import tiny  # noqa: E402
from maskcon_jax import trainer  # noqa: E402
from tests.data import numerics  # noqa: E402

FIXTURE = ROOT / "tests" / "data" / "step_identity.json"
MODES = ("maskcon", "grafit", "coins", "moco", "wcl", "selfcon", "saliency")
# Modes whose own config file adds fields to configs/default.py's.
CONFIG_FILES = ("wcl", "selfcon", "saliency")
DEVICE_COUNTS = (1, 8)
NUM_STEPS = 3
# Rows of the tiny training set (64 items) in the order the batches take them.
BATCH_ORDER_SEED = 0
# The state's arrays that every mode has, and those of the key encoder and
# queue (which wcl and selfcon need not carry).
COMMON_GROUPS = ("step", "params", "batch_stats", "opt_state", "rng")
KEY_GROUPS = (
    "target_params",
    "target_batch_stats",
    "queue_KxD",
    "queue_labels_K",
    "queue_ptr",
)
IN_BATCH_MODES = ("wcl", "selfcon")


def mode_config(mode: str):
  """``configs/tiny.py`` for ``mode``, with its config file's own fields."""
  config = tiny.get_config()
  config.mode = mode
  if mode in CONFIG_FILES:
    base = default.get_config().to_dict()
    own = importlib.import_module(f"configs.{mode}").get_config()
    with config.unlocked():
      for field, value in own.items():
        if field == "mode":
          continue
        plain = value.to_dict() if hasattr(value, "to_dict") else value
        if field not in base or base[field] != plain:
          config[field] = value
  return config


def state_groups(mode: str) -> tuple[str, ...]:
  """The state fields whose arrays are compared for ``mode``."""
  if mode in IN_BATCH_MODES:
    return COMMON_GROUPS
  return COMMON_GROUPS + KEY_GROUPS


def _hex(value) -> str:
  return np.asarray(value, np.float32).tobytes().hex()


def fixed_batches(exp, count: int):
  """``count`` batches of distinct training rows, split over ``exp.mesh``."""
  size = exp.config.batch_size
  order = np.random.default_rng(BATCH_ORDER_SEED).permutation(
      exp.dataset.num_train
  )
  sharding = NamedSharding(exp.mesh, P("data"))
  batches = []
  for i in range(count):
    rows = order[i * size : (i + 1) * size]
    batches.append(
        {
            "image": jax.device_put(exp.dataset.train_images[rows], sharding),
            "coarse_label": jax.device_put(
                exp.dataset.train_coarse[rows].astype(np.int32), sharding
            ),
        }
    )
  return batches


def prefills(exp) -> bool:
  """Whether the trainer pre-fills ``exp``'s queue before the first step
  (never for a state without a queue)."""
  return exp.config.queue_init == "prefill" and exp.state.queue_KxD is not None


def run_mode(mode: str, num_devices: int) -> dict:
  """The metrics and state digests of ``mode`` after `NUM_STEPS` steps."""
  config = mode_config(mode)
  config.num_devices = num_devices
  exp = trainer.build_experiment(config)
  assert exp.mesh.size == num_devices
  batches = fixed_batches(exp, NUM_STEPS)
  state = exp.state
  if prefills(exp):
    prefill = trainer.make_prefill_step(exp)
    num_batches = -(-config.queue_size // config.batch_size)
    for i in range(num_batches):
      state = prefill(state, batches[i % NUM_STEPS], np.int32(i))
  step_fn = trainer.make_train_step(exp)
  metrics = []
  for batch in batches:
    state, step_metrics = step_fn(state, batch)
    metrics.append(
        {k: _hex(v) for k, v in sorted(jax.device_get(step_metrics).items())}
    )
  return {
      "metrics": metrics,
      "state": {
          group: numerics.digests(getattr(state, group))
          for group in state_groups(mode)
      },
  }


# On a CPU without a record: what is compared, within `FIRST_STEP_RTOL`.
# Measured between the two recorded CPUs: at most 1.4e-5 (relative) for
# these; later steps, and other metrics on 8 devices, differ by up to tens
# of percent (tiny: two images per device under per-device BatchNorm).
FIRST_STEP_RTOL = 1e-4
FIRST_STEP_METRICS = {
    1: ("loss", "grad_norm", "positive_similarity"),
    8: ("loss",),
}


def _float(hex_value: str) -> float:
  return float(np.frombuffer(bytes.fromhex(hex_value), np.float32)[0])


def _first_step_problems(got: dict, want: dict, num_devices: int) -> list[str]:
  problems = []
  got_step, want_step = got["metrics"][0], want["metrics"][0]
  for name in FIRST_STEP_METRICS[num_devices]:
    if name not in want_step:
      continue
    a, b = _float(got_step[name]), _float(want_step[name])
    if not abs(a - b) <= FIRST_STEP_RTOL * max(abs(a), abs(b)):
      problems.append(f"first step's {name} {a!r} vs {b!r}")
  return problems


def check_run(stored: dict, key: str, got: dict) -> tuple[str, list[str]]:
  """How ``got`` (a `run_mode` result for ``key``, e.g. "maskcon/8") was
  checked against the ``stored`` fixture ("bits" or "first step"), and the
  problems found (none: it passed).

  On a CPU with a record at the running XLA optimisation level
  (`numerics.own_record`): that record's bits, every metric and array.
  Otherwise (where the bits cannot be known): equal bits to some record
  pass; else the first step's `FIRST_STEP_METRICS` must be within
  `FIRST_STEP_RTOL` of every record's, a tripwire for changed arithmetic.
  """
  records = stored["records"]
  own = numerics.own_record(records)
  if own is not None:
    want = own["runs"][key]
    problems = []
    if got["metrics"] != want["metrics"]:
      problems.append("metrics differ")
    for group, want_group in want["state"].items():
      got_group = got["state"].get(group, {})
      differ = sorted(
          name
          for name in set(want_group) | set(got_group)
          if want_group.get(name) != got_group.get(name)
      )
      if differ:
        problems.append(f"{group} differs at {', '.join(differ[:5])}")
    return "bits", problems
  if any(r["runs"][key] == got for r in records):
    return "bits", []
  num_devices = int(key.rpartition("/")[2])
  return "first step", [
      f"{p} (record of {r['cpu'] or 'the first CPU'})"
      for r in records
      for p in _first_step_problems(got, r["runs"][key], num_devices)
  ]


def versions() -> dict[str, str]:
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def compute(modes=MODES, device_counts=DEVICE_COUNTS) -> dict:
  return {
      f"{mode}/{n}": run_mode(mode, n) for mode in modes for n in device_counts
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  action = parser.add_mutually_exclusive_group()
  action.add_argument(
      "--check",
      action="store_true",
      help="compare with the stored fixture as the test does; write nothing",
  )
  action.add_argument(
      "--add-record",
      action="store_true",
      help="append this machine's record to the stored fixture",
  )
  args = parser.parse_args(argv)
  if jax.device_count() < max(DEVICE_COUNTS):
    raise SystemExit(f"needs {max(DEVICE_COUNTS)} devices; unset XLA_FLAGS.")
  if args.add_record:
    numerics.add_record(FIXTURE, versions(), compute)
    return 0
  results = compute()
  if args.check:
    stored = json.loads(FIXTURE.read_text())
    checked = {k: check_run(stored, k, results[k]) for k in results}
    for key, (how, problems) in sorted(checked.items()):
      print(f"{key} ({how}): {'; '.join(problems) or 'as stored'}")
    return 1 if any(problems for _, problems in checked.values()) else 0
  numerics.write_json(
      FIXTURE,
      {
          "about": (
              "Train-step bit-identity fixture; see "
              "tests/data/make_step_fixture.py."
          ),
          "versions": versions(),
          "num_steps": NUM_STEPS,
          "records": [numerics.record(results)],
      },
  )
  print(f"wrote {FIXTURE}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
