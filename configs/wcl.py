r"""WCL (weakly supervised contrastive learning) on Fashion-MNIST, CPU-sized.

  python -m maskcon_jax.train --config configs/wcl.py --workdir runs/wcl

Expected (README, "All seven methods"; 3 epochs, about 10-14 minutes on a
2-core CPU): fine R@1 0.800, kNN 0.844, linear probe 0.862. WCL is
unsupervised: two strong views per image through the query encoder, NT-Xent on
the first head plus SupCon on the second head with weak labels from the
connected components of each view's 1-NN graph, swapped between the views
(Zheng et al., ICCV 2021). `--config.wcl.same_coarse_nn=True` lets the coarse
labels in by restricting each sample's nearest neighbour to its coarse class;
`--config.wcl.graph_weight=2` weighs the graph loss (the block's fields and
defaults: `maskcon_jax/methods/wcl.py`).

Paper values kept: temperature 0.1 for both losses, graph-loss weight 1,
three-layer BN heads (smaller: 512 hidden, 128 out, instead of 4096/256).
Not kept, so that only the loss differs from the other modes: LARS (the
shared SGD schedule of configs/default.py is used), and the switch from
MoCo-v2 to SimCLR augmentations after warm-up (both views use
`strong_policy`). WCL is in-batch: its state has no key encoder and no queue,
and the queue fields (queue_size, queue_init, ...) are ignored.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "wcl"
  config.t0 = 0.1  # WCL's temperature for both losses.
  config.wcl = ml_collections.ConfigDict(
      dict(
          same_coarse_nn=False,  # Each 1-NN within its coarse class.
          graph_weight=1.0,  # The paper adds the graph loss with weight 1.
      )
  )
  # SyncBN in the official code: statistics over the whole (global) batch.
  config.query_bn = "global"
  return config
