r"""The MaskCon paper's common settings; the dataset configs start from here.

Not a run of its own (it names no dataset): see configs/cifar100.py,
cifartoy_*.py, imagenet32.py, cars196.py, sop*.py, folder_example.py.
Settings are the official code's defaults: ResNet-18 (width 64), 256-d
embeddings, queue 8192, t0=0.1, t=0.05, w=0.5, EMA 0.99, SGD lr 0.02 with 5
warm-up epochs then cosine decay, wd 5e-4, batch 128, 200 epochs.
"""

from ml_collections import config_dict

from configs import default


def get_config(
    dataset: str, image_size: int, strong_policy: str, weak_policy: str
):
  config = default.get_config()
  config.dataset = dataset
  config.image_size = image_size
  # None: stream 224-px datasets, hold 32-px ones in memory.
  config.in_memory = config_dict.placeholder(bool)
  config.strong_policy = strong_policy
  config.weak_policy = weak_policy

  config.mode = "maskcon"
  config.w = 0.5
  config.t0 = 0.1
  config.t = 0.05
  config.queue_size = 8192
  config.ema_momentum = 0.99

  config.arch = "resnet18"
  config.width = 64
  config.embed_dim = 256
  config.proj_hidden_dim = 512

  config.batch_size = 128
  config.num_epochs = 200
  config.warmup_epochs = 5
  config.learning_rate = 0.02
  config.weight_decay = 5e-4
  config.eval_every_epochs = 10
  if image_size > 64:
    config.eval_batch_size = 256
  return config
