r"""MaskCon on scikit-learn's bundled digits (no download, any OS).

  python -m maskcon_jax.train --config configs/digits.py --workdir runs/digits

Coarse = fine // 5 (digits 0-4 vs 5-9); 8x8 grayscale images, 1437 train /
360 test. Expected on 2 CPU cores: about 2 minutes, fine R@1 ~ 0.9.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "digits"
  config.image_size = 8
  config.width = 16
  config.batch_size = 64
  config.queue_size = 1024
  config.num_epochs = 30
  config.warmup_epochs = 2
  config.eval_every_epochs = 10
  config.eval_batch_size = 360
  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  return config
