r"""Trains the official MaskCon PyTorch code at the parity protocol (one run).

Not part of the library: `benchmarks/official_parity.py` runs this script
with a Python that has torch and torchvision, once per (mode, seed), and puts
its numbers next to ours. It can also be run by hand:

  python benchmarks/official_parity_torch.py --official ~/MaskCon_CVPR2023 \
      --mode maskcon --w 0.5 --seed 1228 --out runs/parity/official.json

What it runs is the official repository's own code: the `MaskCon` module of
``models/model.py`` (EMA key encoder, shuffle-BN, queue pre-fill, the
maskcon/grafit/coins losses), ``main.train`` (one epoch, with the official
per-iteration ``adjust_learning_rate``), ``main.retrieval`` (Recall@K) and the
``CIFAR10Policy`` AutoAugment of ``utils/utils.py``. The files are not edited;
what cannot run here is patched at run time, and only that:

1. NumPy >= 1.24 has no ``np.int`` (``utils/utils.py`` uses it): aliased to
   ``int`` before the import.
2. ``.cuda()`` on tensors and modules: a no-op when the run is on the CPU
   (``--device cpu``, or ``auto`` on a machine without CUDA); on a GPU the
   official calls run as written.
3. ``resnet18(pretrained=True)`` downloads ImageNet weights: replaced by a
   torchvision ``ResNet`` (same ``BasicBlock``s, same initialisation) whose
   every width is divided by ``--width_divisor``; the small-image stem that
   ``ModelBase`` installs (3x3 stride-1 ``conv1``) gets the same width, and
   ``dim_dict['resnet18']`` the narrower feature size. Both sides train from
   scratch.
4. The official ``main()`` knows no Fashion-MNIST and logs to wandb: this
   script builds the data (``--data_dir``, the Debian package's IDX files)
   and the views with the official transforms, as ``get_augment`` does for
   32-px datasets (RandomResizedCrop + flip, + ``CIFAR10Policy`` for the
   query), and repeats ``main_proc``'s loop without wandb: pre-fill the
   queue, then per epoch ``retrieval`` when ``epoch % 10 == 0`` and
   ``train``. The official loop never evaluates the final model; this script
   adds one ``retrieval`` after the last epoch. Its epoch-0 evaluation is the
   untrained network (``encoder_q`` before any step).

MoCo is the official ``maskcon`` mode with ``--w 0`` (its target is then the
one-hot self target); grafit and coins are the official ``forward_explicit``
modes.

Output: one JSON file with the Recall@K of every evaluation (``untrained``,
``epoch_10``, ..., ``final``), the wall time of the pre-fill and of training,
and the seconds per step.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import random
import sys
import time
import types

# tqdm reads this when imported: the official loop draws progress bars.
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import torch_narrow_resnet  # noqa: E402

# Fashion-MNIST fine classes -> the default config's three coarse classes:
# tops {0, 2, 4, 6}, footwear {5, 7, 9}, other {1, 3, 8}.
FASHION_MNIST_COARSE = (0, 2, 0, 2, 0, 1, 0, 1, 2, 1)
FASHION_MNIST_MEAN = 0.286
FASHION_MNIST_STD = 0.353
RETRIEVAL_KS = (1, 2, 5, 10, 50, 100)


def read_idx(path: str) -> np.ndarray:
  """An IDX file (optionally gzipped) as a NumPy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(
      int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
  )
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(data_dir: str, stem: str) -> str:
  for name in (stem, stem + ".gz"):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      return path
  raise SystemExit(
      f"error: {stem}[.gz] not found in {data_dir}; install "
      "Debian's dataset-fashion-mnist or pass --data_dir."
  )


def load_subsets(
    data_dir: str, num_train: int, num_test: int, subset_seed: int
):
  """The protocol's subsets: the first N of ``default_rng(seed).permutation``.

  Returns:
    ``(train_images, train_fine, test_images, test_fine)``, images uint8
    ``(N, 28, 28)``, in permutation order.
  """
  splits = []
  for prefix, size in (("train", num_train), ("t10k", num_test)):
    images = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    order = np.random.default_rng(subset_seed).permutation(len(labels))[:size]
    splits += [images[order], labels[order].astype(np.int64)]
  return tuple(splits)


def patch_official(official: str, width_divisor: int, *, on_cpu: bool = True):
  """Imports the official modules with the run-time patches listed above.

  ``on_cpu``: apply patch 2 (``.cuda()`` as a no-op).

  Returns:
    ``(main, model_module, utils_module)``.
  """
  import torch
  from torch import nn
  from torchvision.models import resnet

  np.int = int  # Patch 1: removed in NumPy 1.24, used by utils/utils.py.
  if on_cpu:  # Patch 2.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self

  width = 64 // width_divisor

  def narrow_resnet18(pretrained=False, **kwargs):
    del pretrained, kwargs  # Both sides train from scratch.
    return torch_narrow_resnet.narrow_resnet(
        resnet.BasicBlock, [2, 2, 2, 2], width_divisor
    )

  resnet.resnet18 = narrow_resnet18

  sys.path.insert(0, os.path.abspath(official))
  sys.argv = sys.argv[:1]  # main.py builds an argparse parser at import.
  if "wandb" not in sys.modules:  # main.py imports it; nothing here logs.
    sys.modules["wandb"] = types.ModuleType("wandb")
  main = importlib.import_module("main")
  model_module = importlib.import_module("models.model")
  utils_module = importlib.import_module("utils.utils")
  model_module.dim_dict["resnet18"] = 8 * width
  return main, model_module, utils_module


def main_cli(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--official",
      required=True,
      help="checkout of MrChenFeng/MaskCon_CVPR2023",
  )
  parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
  parser.add_argument(
      "--mode", default="maskcon", choices=("maskcon", "grafit", "coins")
  )
  parser.add_argument("--w", type=float, default=0.5)
  parser.add_argument("--t0", type=float, default=0.1)
  parser.add_argument("--t", type=float, default=0.05)
  parser.add_argument("--seed", type=int, default=1228)
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--warm_up", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--K", type=int, default=4096)
  parser.add_argument("--m", type=float, default=0.99)
  parser.add_argument("--lr", type=float, default=0.02)
  parser.add_argument("--wd", type=float, default=5e-4)
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--width_divisor", type=int, default=4)
  parser.add_argument("--num_train", type=int, default=12000)
  parser.add_argument("--num_test", type=int, default=2000)
  parser.add_argument("--subset_seed", type=int, default=0)
  parser.add_argument("--num_workers", type=int, default=4)
  parser.add_argument(
      "--device",
      default="auto",
      choices=("auto", "cpu", "cuda"),
      help="auto: CUDA when torch sees a GPU, else the CPU",
  )
  parser.add_argument("--out", required=True, help="result JSON path")
  args = parser.parse_args(argv)

  import torch
  import torchvision.transforms as transforms
  from PIL import Image
  from torch.utils.data import DataLoader, Dataset

  device = args.device
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda" and not torch.cuda.is_available():
    raise SystemExit(
        "error: --device cuda, but torch sees no CUDA device; "
        "use --device cpu"
    )
  main, model_module, utils_module = patch_official(
      args.official, args.width_divisor, on_cpu=device == "cpu"
  )

  # As the official main(): one seed for Python, torch and NumPy.
  random.seed(args.seed)
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)

  train_x, train_fine, test_x, test_fine = load_subsets(
      args.data_dir, args.num_train, args.num_test, args.subset_seed
  )
  coarse_of = np.asarray(FASHION_MNIST_COARSE, np.int64)

  size = 28
  normalize = transforms.Normalize(
      mean=(FASHION_MNIST_MEAN,) * 3, std=(FASHION_MNIST_STD,) * 3
  )
  # get_augment's 32-px branch ("strong" and "weak"), at 28 px.
  weak = transforms.Compose(
      [
          transforms.RandomResizedCrop(size=[size, size], scale=(0.2, 1)),
          transforms.RandomHorizontalFlip(),
          transforms.ToTensor(),
          normalize,
      ]
  )
  strong = transforms.Compose(
      [
          transforms.RandomResizedCrop(size=[size, size], scale=(0.2, 1)),
          transforms.RandomHorizontalFlip(),
          utils_module.CIFAR10Policy(),
          transforms.ToTensor(),
          normalize,
      ]
  )
  test = transforms.Compose(
      [transforms.Resize(size=[size, size]), transforms.ToTensor(), normalize]
  )

  class FashionMNIST(Dataset):
    """(view(s), coarse, fine) like the official datasets; gray -> RGB."""

    def __init__(self, images, fine, transform):
      self.images, self.fine, self.transform = images, fine, transform
      self.coarse = coarse_of[fine]

    def __len__(self):
      return len(self.images)

    def __getitem__(self, i):
      image = Image.fromarray(self.images[i], mode="L").convert("RGB")
      return self.transform(image), int(self.coarse[i]), int(self.fine[i])

  train_set = FashionMNIST(
      train_x, train_fine, utils_module.DMixTransform([weak, strong], [1, 1])
  )
  test_set = FashionMNIST(test_x, test_fine, test)
  train_loader = DataLoader(
      train_set,
      batch_size=args.batch_size,
      shuffle=True,
      num_workers=args.num_workers,
      drop_last=True,
      pin_memory=False,
  )
  test_loader = DataLoader(
      test_set,
      batch_size=args.batch_size,
      shuffle=False,
      num_workers=args.num_workers,
      pin_memory=False,
  )

  model = model_module.MaskCon(
      num_classes_coarse=3,
      dim=args.dim,
      K=args.K,
      m=args.m,
      T1=args.t0,
      arch="resnet18",
      size=size,
      T2=args.t,
      mode=args.mode,
  )
  if device == "cuda":
    model = model.cuda()  # As the official main_proc does.
  run_args = argparse.Namespace(
      w=args.w,
      mode=args.mode,
      lr=args.lr,
      warm_up=args.warm_up,
      epochs=args.epochs,
  )
  optimizer = torch.optim.SGD(
      model.parameters(), lr=args.lr, weight_decay=args.wd, momentum=0.9
  )

  def recall():
    values = main.retrieval(model.encoder_q, test_loader, list(RETRIEVAL_KS))
    return {f"fine_recall@{k}": float(v) for k, v in zip(RETRIEVAL_KS, values)}

  result = {
      "side": "official",
      "mode": args.mode,
      "w": args.w,
      "t0": args.t0,
      "t": args.t,
      "seed": args.seed,
      "epochs": args.epochs,
      "steps_per_epoch": len(train_loader),
      "torch": torch.__version__,
      "threads": torch.get_num_threads(),
      "device": (torch.cuda.get_device_name() if device == "cuda" else "cpu"),
      "evaluations": {},
  }
  start = time.time()
  model.initiate_memorybank(train_loader)
  result["prefill_seconds"] = round(time.time() - start, 2)
  train_seconds = 0.0
  for epoch in range(args.epochs):
    model.train()
    if epoch % 10 == 0:
      name = "untrained" if epoch == 0 else f"epoch_{epoch}"
      result["evaluations"][name] = recall()
      print(f"{name}: {result['evaluations'][name]}", flush=True)
    start = time.time()
    loss = main.train(model, train_loader, optimizer, epoch, run_args)
    train_seconds += time.time() - start
    print(
        f"epoch {epoch + 1}/{args.epochs} loss {loss:.4f} "
        f"({train_seconds:.0f} s)",
        flush=True,
    )
  result["evaluations"]["final"] = recall()
  result["final_loss"] = float(loss)
  result["train_seconds"] = round(train_seconds, 2)
  result["seconds_per_step"] = round(
      train_seconds / (args.epochs * len(train_loader)), 4
  )
  print(f"final: {result['evaluations']['final']}", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, args.out)


if __name__ == "__main__":
  main_cli()
