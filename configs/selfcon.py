r"""SelfCon (self-contrastive learning with a multi-exit network), CPU-sized.

  python -m maskcon_jax.train --config configs/selfcon.py --workdir runs/selfcon

Expected (README, "All seven methods"; 3 epochs, about 10-14 minutes on a
2-core CPU): fine R@1 0.790, kNN 0.840. One strong view per image;
SupCon over its backbone and sub-network embeddings, positives = same coarse
label, scaled by t0 / tau_b (Bae et al., AAAI 2023). Retrieval uses the
backbone features; `--config.selfcon.eval_exit_ensemble=True` uses the
concatenated normalised backbone and exit features instead. It does not
change the parameters: rerunning the command on a finished workdir with it
only re-evaluates, with the ensemble.

Paper values kept: exit after stage 2 (`selfcon.position`), `fc` sub-network
(`selfcon.size`: fc | small | same), MLP heads Linear(d, d)-ReLU-Linear(d,
128), tau = 0.1, tau_b = 0.07 (`selfcon.base_temperature`).
`selfcon.label_free=True` is the unsupervised variant (only an image's own
exits are positives). The block's fields and defaults:
`maskcon_jax/methods/selfcon.py`. The shared SGD schedule of
configs/default.py replaces the paper's lr 0.5 / batch 1024 / wd 1e-4, so
that only the loss differs from the other modes. SelfCon is in-batch: its
state has no key encoder and no queue, and the queue fields are ignored.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "selfcon"
  config.t0 = 0.1  # SelfCon's tau.
  config.selfcon = ml_collections.ConfigDict(
      dict(
          position=2,  # The exit follows stage 2.
          size="fc",  # fc | small | same
          label_free=False,
          base_temperature=0.07,  # tau_b.
          eval_exit_ensemble=False,
      )
  )
  config.query_bn = "global"
  return config
