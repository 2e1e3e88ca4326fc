r"""MaskCon on Stanford Online Products (TFDS split): 12 super-categories.

  tfds build stanford_online_products --data_dir=$HOME/tensorflow_datasets
  python -m maskcon_jax.train --config configs/sop.py --workdir runs/sop

The dataset's own split: 59,551 train images of 11,318 products, 60,502 test
images of 11,316 other products. The paper evaluates on its own two splits
instead (configs/sop_split1.py, configs/sop_split2.py). Images stream from
disk, resized to 224x224. Settings: the official code's defaults (ResNet-18
width 64, 256-d embeddings, queue 8192, t0=0.1, t=0.05, w=0.5, SGD lr 0.02, 5
warm-up epochs, wd 5e-4, batch 128, 200 epochs), SOP augmentations, ImageNet
normalisation.

Views: both encoders see RandomResizedCrop(224, scale 0.2-1) + horizontal
flip + RandomPerspective(0.5, p=0.5) (`sop`), as the official code. Test
images are only resized and normalised.

Expected: not yet measured. The official code starts from ImageNet-pretrained
weights; this config trains from scratch.
"""

from configs import paper


def get_config():
  config = paper.get_config("sop", 224, "sop", "sop")
  return config
