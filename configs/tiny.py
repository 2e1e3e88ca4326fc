r"""A seconds-long run on synthetic data, for tests, notebooks and smoke checks.

  python -m maskcon_jax.train --config configs/tiny.py --workdir /tmp/tiny

Expected: finishes in well under a minute on a CPU; the numbers mean nothing.
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "synthetic"
  config.synthetic = ml_collections.ConfigDict(
      dict(
          num_train=64,
          num_test=32,
          image_size=8,
          channels=3,
          num_fine=8,
          num_coarse=2,
      )
  )
  config.image_size = 8
  config.arch = "resnet10"
  config.width = 4
  config.embed_dim = 16
  config.proj_hidden_dim = 32
  config.batch_size = 16
  config.queue_size = 40  # Not a multiple of the batch: exercises wrap-around.
  config.num_epochs = 2
  config.warmup_epochs = 1
  config.eval_every_epochs = 1
  config.eval_batch_size = 16
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  config.retrieval_ks = (1, 2, 5)
  # The MoCo v2 strong view (crop, flip, colour): cheaper to compile than the
  # default AutoAugment, which tests/test_augment*.py cover on their own.
  config.strong_policy = "strong"
  return config
