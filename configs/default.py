r"""MaskCon on Fashion-MNIST with three coarse classes, sized for a laptop CPU.

  python -m maskcon_jax.train --config configs/default.py --workdir runs/default

Coarse classes: tops {T-shirt/top, Pullover, Coat, Shirt}, footwear {Sandal,
Sneaker, Ankle boot}, other {Trouser, Dress, Bag}; retrieval is scored on the
10 fine classes. Expected on 2 CPU cores: about 10 minutes (measured 609 s),
fine R@1 / R@5 / R@10 ~ 0.755 / 0.921 / 0.961 (seed 1228; 0.758 / 0.927 /
0.964 on another CPU kind: see the README's "The default run").

The loss hyperparameters are the official code's defaults (t0=0.1, t=0.05,
w=0.5, SGD lr 0.02, wd 5e-4, EMA 0.99, batch 128); the encoder, queue and
budget are scaled down to fit the CPU.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Method.
  # maskcon | grafit | coins | moco; wcl, selfcon and saliency have their own
  # configs (their blocks, config.wcl etc., take defaults where left out).
  config.mode = "maskcon"
  config.w = 0.5
  config.t0 = 0.1
  config.t = 0.05
  config.queue_size = 4096
  config.queue_init = "prefill"  # prefill (official) | random
  config.ema_momentum = 0.99

  # Data.
  config.dataset = "fashion_mnist"
  config.data_dir = config_dict.placeholder(str)
  config.max_train_examples = config_dict.placeholder(int)
  config.max_test_examples = config_dict.placeholder(int)
  # None: max_*_examples keep the first N examples. An integer: each split
  # keeps the first N indices of np.random.default_rng(subset_seed)
  # .permutation(split size), in that order (the whole split, permuted, when
  # there is no max). In-memory datasets only.
  config.subset_seed = config_dict.placeholder(int)
  # None: the dataset's own channels. 3: gray repeated to RGB; 1: RGB to luma
  # (PIL's convert("L")). In-memory datasets only (streamed data is RGB).
  config.image_channels = config_dict.placeholder(int)
  # A CSV (fine,coarse rows) or JSON ({"fine": "coarse"}) file replacing the
  # dataset's own fine -> coarse map; required by dataset="folder".
  config.coarse_map = config_dict.placeholder(str)
  config.image_size = 28
  # The official small-image views: keys see RandomResizedCrop(scale 0.2-1)
  # + horizontal flip; queries the same + the official CIFAR-10 AutoAugment.
  config.strong_policy = "cifar_strong"
  config.weak_policy = "weak"

  # Model.
  config.arch = "resnet18"
  config.width = 16  # 64 = standard ResNet.
  config.embed_dim = 128
  config.proj_hidden_dim = 512
  config.precision = "float32"  # float32 | bfloat16
  # 3x3 convolutions pad one pixel on each side, as PyTorch; "same" is XLA's
  # SAME, which runs made before this field existed used.
  config.conv_padding = "torch"  # torch | same
  # Start both encoders from other weights: another run's workdir, or a
  # torchvision ResNet state dict (.npz or .safetensors), e.g. ImageNet's as
  # the paper does. Read only when a run starts (see maskcon_jax/pretrained.py
  # and the README's "Use a trained model").
  config.init_from = config_dict.placeholder(str)

  # Devices and BatchNorm. MoCo's shuffle-BN for the key encoder (on one
  # device it is the same as global BN); per-device BN for the query encoder,
  # as MoCo on several GPUs. See the README's multi-device section.
  config.num_devices = config_dict.placeholder(int)  # None: all devices.
  # Multi-host: call jax.distributed.initialize() (also done whenever
  # JAX_COORDINATOR_ADDRESS is set).
  config.distributed = False
  config.key_bn = "shuffle"  # shuffle | global | split
  config.bn_splits = 1  # sub-batches for key_bn="split"
  config.query_bn = "per_device"  # per_device | global

  # Optimisation.
  config.batch_size = 128
  config.num_epochs = 3
  config.learning_rate = 0.02
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.warmup_epochs = 0.5
  config.seed = 1228

  # Evaluation, logging, checkpoints.
  config.retrieval_ks = (1, 2, 5, 10, 50, 100)
  config.eval_every_epochs = 1
  config.eval_batch_size = 500
  # Optional online k-NN monitor (fine top-1 of 2000 test vs 2000 train
  # items, logged as monitor/knn_fine_top1); None = off.
  config.knn_monitor_every_steps = config_dict.placeholder(int)
  config.knn_monitor_size = 2000
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  # Stop this invocation after this global step (the schedule still spans
  # num_epochs); rerun without it to continue. For quick looks and tests.
  config.stop_after_steps = config_dict.placeholder(int)
  return config
