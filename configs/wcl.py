r"""WCL (weakly supervised contrastive learning) on Fashion-MNIST, CPU-sized.

  python -m maskcon_jax.train --config configs/wcl.py --workdir runs/wcl

Expected (README, "All seven methods"; 3 epochs, about 10-14 minutes on a
2-core CPU): fine R@1 0.800, kNN 0.844, linear probe 0.862. WCL is
unsupervised: two strong views per image through the query encoder, NT-Xent on
the first head plus SupCon on the second head with weak labels from the
connected components of each view's 1-NN graph, swapped between the views
(Zheng et al., ICCV 2021). `--config.wcl_same_coarse_nn=True` lets the coarse
labels in by restricting each sample's nearest neighbour to its coarse class.

Paper values kept: temperature 0.1 for both losses, graph-loss weight 1,
three-layer BN heads (smaller: 512 hidden, 128 out, instead of 4096/256).
Not kept, so that only the loss differs from the other modes: LARS (the
shared SGD schedule of configs/default.py is used), and the switch from
MoCo-v2 to SimCLR augmentations after warm-up (both views use
`strong_policy`). The EMA key encoder and the queue stay in the state but are
never used, so the queue is the smallest allowed and starts random.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "wcl"
  config.t0 = 0.1  # WCL's temperature for both losses.
  config.wcl_same_coarse_nn = False
  config.wcl_graph_weight = 1.0
  # SyncBN in the official code: statistics over the whole (global) batch.
  config.query_bn = "global"
  # Unused by WCL (kept for a uniform state): as small as allowed.
  config.queue_size = config.batch_size
  config.queue_init = "random"
  return config
