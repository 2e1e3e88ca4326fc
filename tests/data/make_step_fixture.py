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
other arrays are compared for them.) XLA:CPU's results depend on the
jax/jaxlib release, so the file records the versions it was written with and
the test is skipped under others; the same values came out on 1 and on 2
CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pathlib
import platform
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


def _digest(array) -> str:
  array = np.asarray(jax.device_get(array))
  h = hashlib.sha256(f"{array.dtype.str} {array.shape}".encode())
  h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()


def _digests(tree) -> dict[str, str]:
  return {
      jax.tree_util.keystr(path): _digest(leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


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
          group: _digests(getattr(state, group)) for group in state_groups(mode)
      },
  }


def versions() -> dict[str, str]:
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def compute(modes=MODES, device_counts=DEVICE_COUNTS) -> dict:
  return {
      f"{mode}/{n}": run_mode(mode, n) for mode in modes for n in device_counts
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--check",
      action="store_true",
      help="compare with the stored fixture; write nothing",
  )
  args = parser.parse_args(argv)
  if jax.device_count() < max(DEVICE_COUNTS):
    raise SystemExit(f"needs {max(DEVICE_COUNTS)} devices; unset XLA_FLAGS.")
  results = compute()
  if args.check:
    stored = json.loads(FIXTURE.read_text())["runs"]
    bad = sorted(k for k in stored if stored[k] != results.get(k))
    print("identical" if not bad else f"differ: {', '.join(bad)}")
    return 1 if bad else 0
  payload = {
      "about": (
          "Train-step bit-identity fixture; see "
          "tests/data/make_step_fixture.py."
      ),
      "versions": versions(),
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
      "num_steps": NUM_STEPS,
      "runs": results,
  }
  FIXTURE.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
  print(f"wrote {FIXTURE}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
