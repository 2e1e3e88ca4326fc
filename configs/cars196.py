r"""MaskCon on Cars196: 8 body types (sedan, SUV, ...) over the 196 car models.

  tfds build cars196 --data_dir=$HOME/tensorflow_datasets   # once
  python -m maskcon_jax.train --config configs/cars196.py \
      --workdir runs/cars196

Images stream from disk (set --config.in_memory=True to hold them in host
memory instead), resized to 224x224. The official README's Cars196 settings:
t=0.1, w=1.0; the rest are the code's defaults (ResNet-18 width 64, 256-d
embeddings, queue 8192, t0=0.1, SGD lr 0.02, 5 warm-up epochs, wd 5e-4,
batch 128, 200 epochs). Cars augmentations, ImageNet normalisation.

Views: the key encoder sees RandomResizedCrop(224, scale 0.2-1) +
RandomPerspective(0.5, p=0.5) + horizontal flip (`cars_weak`); the query
encoder sees RandomResizedCrop + flip + RandomPerspective + ColorJitter(0.4,
0.4, 0.4, 0.1) with p=0.8 + grayscale p=0.2 + Gaussian blur (sigma 0.1-2)
with p=0.5 (`cars_strong`). Test images are only resized and normalised.

Expected: not yet measured. The official code starts from ImageNet-pretrained
weights; this config trains from scratch.
"""

from configs import paper


def get_config():
  config = paper.get_config("cars196", 224, "cars_strong", "cars_weak")
  config.w = 1.0
  config.t = 0.1
  return config
