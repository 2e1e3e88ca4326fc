r"""SelfCon (self-contrastive learning with a multi-exit network), CPU-sized.

  python -m maskcon_jax.train --config configs/selfcon.py --workdir runs/selfcon

Expected (README, "All seven methods"; 3 epochs, about 10-14 minutes on a
2-core CPU): fine R@1 0.790, kNN 0.840. One strong view per image;
SupCon over its backbone and sub-network embeddings, positives = same coarse
label, scaled by t0 / tau_b (Bae et al., AAAI 2023). Retrieval uses the
backbone features; `--config.eval_exit_ensemble=True` uses the concatenated
normalised backbone and exit features instead. It does not change the
parameters: rerunning the command on a finished workdir with it only
re-evaluates, with the ensemble.

Paper values kept: exit after stage 2 (`selfcon_position`), `fc` sub-network
(`selfcon_size`: fc | small | same), MLP heads Linear(d, d)-ReLU-Linear(d,
128), tau = 0.1, tau_b = 0.07. `selfcon_label_free=True` is the
unsupervised variant (only an image's own exits are positives). The shared
SGD schedule of configs/default.py replaces the paper's lr 0.5 / batch 1024 /
wd 1e-4, so that only the loss differs from the other modes. The EMA key
encoder and the queue stay in the state but are never used.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "selfcon"
  config.t0 = 0.1  # SelfCon's tau.
  config.selfcon_base_temperature = 0.07
  config.selfcon_position = 2
  config.selfcon_size = "fc"
  config.selfcon_label_free = False
  config.eval_exit_ensemble = False
  config.query_bn = "global"
  # Unused by SelfCon (kept for a uniform state): as small as allowed.
  config.queue_size = config.batch_size
  config.queue_init = "random"
  return config
