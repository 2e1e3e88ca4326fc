r"""The protocol on which we train side by side with the official MaskCon code.

  python -m maskcon_jax.train --config configs/official_parity.py \
      --workdir runs/parity_maskcon
  # Both sides, 3 seeds, with the official code (see BENCHMARKS.md):
  python benchmarks/official_parity.py --official PATH/MaskCon_CVPR2023 \
      --torch_python PATH/bin/python --workdir runs/parity

Fashion-MNIST (Debian's dataset-fashion-mnist), the default config's three
coarse classes. Training subset: the first 12,000 indices of
numpy.random.default_rng(0).permutation(60000); test subset: the first 2,000
of default_rng(0).permutation(10000). 28 px, the gray image repeated to 3
channels (as torchvision does for an RGB PIL image), normalised with mean
0.286 and std 0.353. ResNet-18 with every width divided by 4 (3x3 stride-1
stem of 16 channels, no max-pool), projection 128 -> 512 -> 256. Batch 128,
queue 4096, t0 0.1, t 0.05, w 0.5, EMA 0.99, SGD lr 0.02, momentum 0.9,
weight decay 5e-4, 2 warm-up epochs then cosine, 20 epochs (1,860 steps).

Views: the key encoder sees RandomResizedCrop(28, scale 0.2-1) + horizontal
flip (`weak`); the query encoder sees the same followed by the official
code's CIFAR-10 AutoAugment (`cifar_strong`). Evaluation: fine Recall@K on
the 2,000 test images, each query excluded from its own neighbours.

Expected result: see BENCHMARKS.md, "Parity with the official code" (fine
R@1 about 0.75 for maskcon on 2 CPU cores, about 15 minutes a run).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.max_train_examples = 12000
  config.max_test_examples = 2000
  config.subset_seed = 0
  config.image_channels = 3
  config.image_size = 28
  config.strong_policy = "cifar_strong"
  config.weak_policy = "weak"

  config.mode = "maskcon"
  config.w = 0.5
  config.t0 = 0.1
  config.t = 0.05
  config.queue_size = 4096
  config.ema_momentum = 0.99

  config.arch = "resnet18"
  config.width = 16
  config.embed_dim = 256
  config.proj_hidden_dim = 512

  config.batch_size = 128
  config.num_epochs = 20
  config.warmup_epochs = 2
  config.learning_rate = 0.02
  config.momentum = 0.9
  config.weight_decay = 5e-4
  # Evaluate once, at the end (the harness reads the final numbers).
  config.eval_every_epochs = 20
  config.retrieval_ks = (1, 2, 5, 10, 50, 100)
  return config
