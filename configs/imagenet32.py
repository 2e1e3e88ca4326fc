r"""MaskCon on ImageNet32: 12 coarse groups of the 1000 ImageNet classes.

  # Once: prepare TFDS imagenet_resized/32x32 (Imagenet32_train_npz.zip and
  # Imagenet32_val_npz.zip from image-net.org, an account is needed).
  tfds build imagenet_resized/32x32 --data_dir=$HOME/tensorflow_datasets
  python -m maskcon_jax.train --config configs/imagenet32.py \
      --workdir runs/imagenet32

The official README's ImageNet32 settings: queue 16384, t=0.05, w=1.0, batch
256, 100 epochs; the rest are the code's defaults (ResNet-18 width 64, 256-d
embeddings, t0=0.1, SGD lr 0.02, 5 warm-up epochs, wd 5e-4). That README
command also passes `--mode coins`; add --config.mode=coins to run that
instead of MaskCon. 32x32 images, CIFAR augmentations, ImageNet
normalisation; testing uses the validation split.

Views: the key encoder sees RandomResizedCrop(32, scale 0.2-1) + horizontal
flip (`cifar_weak`); the query encoder sees the same followed by the
official code's CIFAR-10 AutoAugment (`cifar_strong`). Test images are only
resized and normalised.

Expected: not yet measured. The official code starts from ImageNet-pretrained
weights; this config trains from scratch.
"""

from configs import paper


def get_config():
  config = paper.get_config("imagenet32", 32, "cifar_strong", "cifar_weak")
  config.w = 1.0
  config.queue_size = 16384
  config.batch_size = 256
  config.num_epochs = 100
  return config
