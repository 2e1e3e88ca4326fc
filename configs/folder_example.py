r"""MaskCon on your own images: class folders plus a fine -> coarse map.

  python -m maskcon_jax.train --config configs/folder_example.py \
      --config.data_dir=/data/my_images \
      --config.coarse_map=/data/my_images/coarse.csv \
      --workdir runs/my_images

Layout: /data/my_images/train/<fine class>/*.{png,jpg,jpeg} and
/data/my_images/test/<fine class>/...; coarse.csv has one `fine,coarse` row
per class folder (a `fine,coarse` header row is optional; a JSON
{"fine": "coarse"} file works too). Images are resized to 224x224 and held in
memory; for large collections add --config.in_memory=False to stream them.

For image lists instead of folders use --config.dataset=csv with
--config.train_csv and --config.test_csv (rows `path,coarse[,fine]`, paths
relative to the CSV). Without fine labels, retrieval can only be scored
against coarse labels.

Settings: the paper's 224-pixel recipe (the Cars196 augmentations; ResNet-18
width 64, 256-d embeddings, queue 8192, t0=0.1, t=0.05, w=0.5, SGD lr 0.02, 5
warm-up epochs, wd 5e-4, batch 128, 200 epochs). Lower image_size (e.g. 64)
and num_epochs for a quick first run.

Views: the key encoder sees RandomResizedCrop(224, scale 0.2-1) +
RandomPerspective(0.5, p=0.5) + horizontal flip (`cars_weak`); the query
encoder sees RandomResizedCrop + flip + RandomPerspective + ColorJitter(0.4,
0.4, 0.4, 0.1) with p=0.8 + grayscale p=0.2 + Gaussian blur (sigma 0.1-2)
with p=0.5 (`cars_strong`). Test images are only resized and normalised.

Expected: depends on the data; not yet measured on any example set.
"""

from ml_collections import config_dict

from configs import paper


def get_config():
  config = paper.get_config("folder", 224, "cars_strong", "cars_weak")
  config.coarse_map = config_dict.placeholder(str)
  config.train_csv = config_dict.placeholder(str)
  config.test_csv = config_dict.placeholder(str)
  return config
