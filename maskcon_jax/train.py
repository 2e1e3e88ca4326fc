r"""Trains a contrastive model on coarse labels and evaluates fine retrieval.

  python -m maskcon_jax.train --config configs/default.py --workdir runs/default
  python -m maskcon_jax.train --config configs/default.py --workdir runs/grafit \
      --config.mode=grafit --config.w=1.0

Rerunning the same command on the same workdir resumes from its latest
checkpoint (or only re-evaluates a finished run).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from maskcon_jax import trainer  # noqa: E402
from maskcon_jax.errors import UserError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, TensorBoard events and "
    "results.json.")
flags.mark_flags_as_required(["config", "workdir"])


class _HideCheckpointChatter:
  """Drops orbax's per-save INFO records so progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "/orbax/" not in record.pathname  # 30: WARNING


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_HideCheckpointChatter())
  config = _CONFIG.value
  if config.get("distributed") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # Multi-host. TPU pods and SLURM are detected by JAX; elsewhere set
    # JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    # JAX_PROCESS_ID on every host.
    import jax  # pylint: disable=g-import-not-at-top
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
      kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
      kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
  try:
    trainer.train_and_evaluate(config, _WORKDIR.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
