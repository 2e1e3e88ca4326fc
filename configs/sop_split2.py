r"""MaskCon on the paper's Stanford Online Products split 2 (12 categories).

  # Once: download Stanford_Online_Products.zip
  # (cvgl.stanford.edu/projects/lifted_struct) and extract it.
  python -m maskcon_jax.train --config configs/sop_split2.py \
      --config.data_dir=/data/Stanford_Online_Products \
      --workdir runs/sop_split2

Split 2: 1,498 products with 10 train and 2 test images each (14,980 / 2,996
images), so test products were seen in training. The image lists ship with
maskcon_jax; images stream from disk, resized to 224x224.

Settings: the official code's defaults (ResNet-18 width 64, 256-d embeddings,
queue 8192, t0=0.1, t=0.05, w=0.5, SGD lr 0.02, 5 warm-up epochs, wd 5e-4,
batch 128, 200 epochs). SOP augmentations, ImageNet normalisation.

Views: both encoders see RandomResizedCrop(224, scale 0.2-1) + horizontal
flip + RandomPerspective(0.5, p=0.5) (`sop`), as the official code. Test
images are only resized and normalised.

Expected: not yet measured. The official code starts from ImageNet-pretrained
weights; this config trains from scratch.
"""

from configs import paper


def get_config():
  config = paper.get_config("sop_split2", 224, "sop", "sop")
  return config
