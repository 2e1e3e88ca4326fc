r"""MaskCon on CIFARtoy-bad: 8 CIFAR-10 classes (deer, frog dropped), 2 coarse.

Coarse groups {airplane, automobile, dog, cat} vs {ship, truck, bird,
horse}: the coarse split cuts across appearance.

  tfds build cifar10 --data_dir=$HOME/tensorflow_datasets   # once
  python -m maskcon_jax.train --config configs/cifartoy_bad.py \
      --workdir runs/cifartoy_bad

The paper's settings (the official code's defaults): ResNet-18 (width 64),
256-d embeddings, queue 8192, t0=0.1, t=0.05, w=0.5, SGD lr 0.02 with 5
warm-up epochs then cosine decay, wd 5e-4, batch 128, 200 epochs, 32x32
images with the CIFAR augmentations and CIFAR-10 normalisation.

Views: the key encoder sees RandomResizedCrop(32, scale 0.2-1) + horizontal
flip (`cifar_weak`); the query encoder sees the same followed by the
official code's CIFAR-10 AutoAugment (`cifar_strong`). Test images are only
resized and normalised.

Expected: not yet measured. The official code starts from ImageNet-pretrained
weights; this config trains from scratch.
"""

from configs import paper


def get_config():
  config = paper.get_config("cifartoy_bad", 32, "cifar_strong", "cifar_weak")
  return config
