r"""Saliency-guided masking on MoCo (Chin et al., WACV 2024), CPU-sized.

  python -m maskcon_jax.train --config configs/saliency.py --workdir runs/saliency

Expected (README, "All seven methods"; 3 epochs, about 10-14 minutes on a
2-core CPU): fine R@1 0.574, below MoCo's 0.760 on these 28 px images (the
README says why). MoCo with a masked query and masked hard negatives: the key
encoder's last activation map, summed over channels, rates a patch grid; the
query (strong view) hides a share of salient and non-salient patches (ratio ~
U[.05, .25]), each hard negative (the key's weak view) hides only salient ones
(ratio ~ U[.4, .7]) and enters the logits as alpha * q.t / t0. Strategies: hp
(high-pass inputs, noise fill; the paper's best), blur, mean
(`--config.saliency.strategy=mean`; the block's fields and defaults:
`maskcon_jax/methods/saliency.py`).

Paper values kept: alpha 2, one hard negative per image, the mask ratios,
foreground threshold mean - 0.6 std, noise std .18 / .14. Scaled to 28 px:
a 4x4 patch grid (the key encoder's 4x4 map; 7x7 at 224 px), and the
high-pass / blur filters (sigma 5 and 10 at 224 px) by 28/224. Everything
else (t0 = 0.1, the queue, SGD) is configs/default.py's MoCo, so the
difference from `--config.mode=moco` is the masking (and hp's filter) alone.

Departures from the official code: the saliency comes from the EMA key
encoder (the official one is a frozen supervised ResNet-50, whose weights
would have to be downloaded); every query gets hard negatives of its own
image (the official code broadcasts one image's negative to the whole
batch); masks are spatial grid masks on all channels (the hp code also uses
focal and per-channel masks) with noise drawn per pixel (officially one
noise patch per batch). For hp the encoder high-passes every input, so
evaluation sees high-passed images too, as the official linear evaluation.
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.mode = "saliency"
  config.saliency = ml_collections.ConfigDict(
      dict(
          alpha=2.0,
          num_hard_negatives=1,
          strategy="hp",  # hp | blur | mean
          # Patches per side; unset: the key encoder's last feature map (4 at
          # 28 px).
          grid=config_dict.placeholder(int),
          fg_std=0.6,
          # intent (the paper) | official (the official code's row-sorted
          # lookup).
          fg_rule="intent",
          query_ratio=(0.05, 0.25),
          negative_ratio=(0.4, 0.7),
          query_noise_std=0.18,
          negative_noise_std=0.14,
          # Unset: the official 224-px sigmas (5 and 10) scaled to image_size.
          hp_sigma=config_dict.placeholder(float),
          blur_sigma=config_dict.placeholder(float),
      )
  )
  return config
