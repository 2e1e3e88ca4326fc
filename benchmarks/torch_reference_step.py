r"""CPU time of the official MaskCon train step in PyTorch, next to ours.

A torchvision-free PyTorch re-implementation of one step of the official
MaskCon code (MrChenFeng/MaskCon_CVPR2023, models/model.py ``forward``):
CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool, fc removed), projector
Linear(512, 512)-ReLU-Linear(512, 256), EMA key encoder updated at the start
of the step, shuffle-BN for the keys, the MaskCon loss over a queue of keys
with coarse labels, SGD (momentum 0.9, weight decay 5e-4) and the enqueue.
Augmentation is left out: the two views are fixed float tensors, so the
PyTorch figure is the model, loss and optimizer only (ours also makes both
views on the device; ``benchmarks/input_throughput.py`` times that part).

It is a timing reference, not a second implementation to train with: torch
is not a dependency of maskcon_jax (``pip install torch`` for the CPU wheel
to run this script).

  python benchmarks/torch_reference_step.py                    # torch only
  python benchmarks/torch_reference_step.py --compare_jax      # both, alternating
  python benchmarks/torch_reference_step.py --compare_jax \
      --jax_variants=ynn_conv,process                          # two XLA settings
  python benchmarks/torch_reference_step.py --smoke --compare_jax   # seconds

With ``--compare_jax`` the script builds our jitted step
(``step_throughput.build_step``, same architecture, batch, queue and
precision; one program per ``--jax_variants`` entry of
``step_throughput.CPU_VARIANTS``) in the same process and times the sides
alternately, one step each per round, so background load on a shared
machine hits all alike. The table reports each side's median wall seconds
and process CPU seconds per step, and both as ratios to torch. torch's
OpenMP threads wait passively by default (``--omp_wait_policy``; see
BENCHMARKS.md for why).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def _torch():
  import torch  # pylint: disable=g-import-not-at-top

  return torch


@functools.cache
def _torch_modules():
  """The torch module classes ``(BasicBlock, Encoder)``, made on first use.

  Defined here rather than at module level because torch is imported late
  (after ``OMP_WAIT_POLICY`` is set) and is not a dependency of maskcon_jax.
  """
  torch = _torch()
  nn, F = torch.nn, torch.nn.functional

  class BasicBlock(nn.Module):
    """torchvision's BasicBlock."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      residual = x if self.downsample is None else self.downsample(x)
      return F.relu(y + residual)

  class Encoder(nn.Module):
    """CIFAR ResNet-18 backbone (the official figsize <= 64 variant) + heads."""

    def __init__(self, width, stages, embed_dim, num_coarse):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      layers, cin = [], width
      for stage, blocks in enumerate(stages):
        cout = width * 2**stage
        for block in range(blocks):
          layers.append(
              BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1)
          )
          cin = cout
      self.layers = nn.Sequential(*layers)
      self.projector = nn.Sequential(
          nn.Linear(cin, 512), nn.ReLU(), nn.Linear(512, embed_dim)
      )
      self.classifier = nn.Linear(cin, num_coarse)

    def forward(self, x):
      x = F.relu(self.bn1(self.conv1(x)))
      x = self.layers(x)
      h = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
      return self.projector(h)

  return BasicBlock, Encoder


def build_torch_encoder(
    width: int,
    *,
    stages=(2, 2, 2, 2),
    embed_dim: int = 256,
    num_coarse: int = 20,
):
  """The official encoder: CIFAR ResNet (3x3 stem) and projector, in torch.

  Args:
    width: channels of the first stage (64 for ResNet-18); stage ``i`` has
      ``width * 2**i``.
    stages: BasicBlocks per stage ((2, 2, 2, 2) is ResNet-18).
    embed_dim: the projection's size (the output of ``forward``).
    num_coarse: outputs of the coarse classifier head, which ``forward`` does
      not use (the official model has it; it gets no gradient in a step).

  Returns:
    A ``torch.nn.Module`` whose ``forward(x)`` maps NCHW images to the
    (unnormalised) projection, freshly initialised from torch's global RNG.
  """
  _, encoder = _torch_modules()
  return encoder(width, stages, embed_dim, num_coarse)


def build_torch_step(
    width: int,
    image_size: int,
    batch_size: int,
    queue_size: int,
    *,
    num_coarse: int = 20,
    embed_dim: int = 256,
    stages=(2, 2, 2, 2),
    seed: int = 0,
    channels_last: bool = False,
):
  """The official step as a closure ``step() -> loss``, on fixed views."""
  torch = _torch()
  F = torch.nn.functional
  torch.manual_seed(seed)
  new_encoder = functools.partial(
      build_torch_encoder,
      width,
      stages=stages,
      embed_dim=embed_dim,
      num_coarse=num_coarse,
  )

  memory_format = (
      torch.channels_last if channels_last else torch.contiguous_format
  )
  encoder_q = new_encoder().to(memory_format=memory_format)
  encoder_k = new_encoder().to(memory_format=memory_format)
  encoder_k.load_state_dict(encoder_q.state_dict())
  for p in encoder_k.parameters():
    p.requires_grad = False
  encoder_q.train()
  encoder_k.train()  # The official code keeps both in train mode.
  optimizer = torch.optim.SGD(
      encoder_q.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4
  )
  queue = F.normalize(torch.randn(embed_dim, queue_size), dim=0)
  queue_labels = torch.randint(0, num_coarse, (queue_size,))
  ptr = [0]
  views = torch.randn(2, batch_size, 3, image_size, image_size)
  im_k = views[0].contiguous(memory_format=memory_format)
  im_q = views[1].contiguous(memory_format=memory_format)
  labels = torch.randint(0, num_coarse, (batch_size,))
  t0, t, w, m = 0.1, 0.05, 0.5, 0.99

  def step():
    with torch.no_grad():
      # Momentum update of the key encoder, at the start as the official code.
      for pk, pq in zip(encoder_k.parameters(), encoder_q.parameters()):
        pk.data.mul_(m).add_(pq.data, alpha=1.0 - m)
      # Shuffle-BN on one device: permute, encode, un-permute.
      idx_shuffle = torch.randperm(batch_size)
      k = F.normalize(encoder_k(im_k[idx_shuffle]), dim=1)
      k = k[torch.argsort(idx_shuffle)]
    q = F.normalize(encoder_q(im_q), dim=1)
    # The MaskCon loss, as models/model.py computes it.
    with torch.no_grad():
      mask = (labels[:, None] == queue_labels[None, :]).float()
      coarse = (k @ queue) / t
      coarse = coarse * mask
      coarse = coarse - coarse.max(dim=1, keepdim=True)[0]
      pseudo = torch.exp(coarse) * mask
      pseudo = pseudo / pseudo.sum(dim=1, keepdim=True)
      pseudo = pseudo / pseudo.max(dim=1, keepdim=True)[0]
      z = torch.cat([torch.ones(batch_size, 1), pseudo], dim=1)
      z = z / z.sum(dim=1, keepdim=True)
      self_target = torch.zeros_like(z)
      self_target[:, 0] = 1.0
      target = w * z + (1.0 - w) * self_target
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.clone().detach()
    logits = torch.cat([l_pos, l_neg], dim=1) / t0
    loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # Enqueue keys and their coarse labels.
      p = ptr[0]
      queue[:, p : p + batch_size] = k.T
      queue_labels[p : p + batch_size] = labels
      ptr[0] = (p + batch_size) % queue_size
    return float(loss.detach())

  return step


def _time(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--queue_size", type=int, default=8192)
  parser.add_argument(
      "--steps",
      type=int,
      default=5,
      help="timed steps (rounds with --compare_jax)",
  )
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument(
      "--threads",
      type=int,
      default=None,
      help="torch intra-op threads (default: all cores)",
  )
  parser.add_argument(
      "--omp_wait_policy",
      default="PASSIVE",
      help="OMP_WAIT_POLICY for torch's OpenMP threads; "
      "'' keeps the environment's",
  )
  parser.add_argument(
      "--channels_last", action="store_true", help="torch NHWC memory format"
  )
  parser.add_argument(
      "--compare_jax",
      action="store_true",
      help="also time our jitted step, alternating",
  )
  parser.add_argument(
      "--jax_variants",
      default=["process"],
      type=common.strs,
      help="comma-separated step_throughput.CPU_VARIANTS",
  )
  parser.add_argument(
      "--precision",
      default="float32",
      help="our step's precision (torch stays float32)",
  )
  common.add_output_flags(parser)
  args = parser.parse_args(argv)
  stages = (2, 2, 2, 2)
  arch = "resnet18"
  if args.smoke:
    args.width, args.image_size, args.batch_size = 4, 8, 8
    args.queue_size, args.steps, args.warmup = 16, 2, 1
    stages, arch = (1, 1, 1, 1), "resnet10"
  if args.omp_wait_policy:
    # On a machine shared with other jobs, OpenMP's default spin-waiting at
    # every parallel region's barrier burns the time slices the other torch
    # thread needs (a tiny model's step goes from 0.02 s to 4 s at load 6);
    # PASSIVE costs little on an idle machine. Must precede importing torch.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
  torch = _torch()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch_step = build_torch_step(
      args.width,
      args.image_size,
      args.batch_size,
      args.queue_size,
      stages=stages,
      channels_last=args.channels_last,
  )
  jax_steps = {}
  if args.compare_jax:
    from benchmarks import step_throughput  # pylint: disable=g-import-not-at-top

    for variant in args.jax_variants:
      jax_steps[variant] = step_throughput.build_step(
          arch,
          args.width,
          args.image_size,
          args.batch_size,
          args.queue_size,
          args.precision,
          1,
          mode="maskcon",
          compiler_options=step_throughput.CPU_VARIANTS[variant],
      )
  runners = {
      "torch": torch_step,
      **{f"jax:{v}": s.run for v, s in jax_steps.items()},
  }
  for _ in range(args.warmup):
    for run in runners.values():
      run()
  # Wall and process CPU seconds per step, one step of each side per round.
  wall = {name: [] for name in runners}
  cpu = {name: [] for name in runners}
  load_before = os.getloadavg()
  for _ in range(args.steps):
    for name, run in runners.items():
      cpu_start = time.process_time()
      wall[name].append(_time(run))
      cpu[name].append(time.process_time() - cpu_start)
  load = os.getloadavg()
  med = {name: statistics.median(t) for name, t in wall.items()}
  med_cpu = {name: statistics.median(t) for name, t in cpu.items()}
  row = dict(
      arch=arch,
      width=args.width,
      image_size=args.image_size,
      batch=args.batch_size,
      queue=args.queue_size,
      torch_threads=torch.get_num_threads(),
      channels_last=args.channels_last,
      precision=args.precision,
      omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
      step_s=med,
      cpu_s=med_cpu,
      times_s=wall,
      cpu_times_s=cpu,
      ratio_over_torch={n: med[n] / med["torch"] for n in med},
      cpu_ratio_over_torch={n: med_cpu[n] / med_cpu["torch"] for n in med_cpu},
      jax_compile_s={v: s.compile_s for v, s in jax_steps.items()},
      load_avg_before=load_before,
      load_avg=load,
  )
  print(
      f"# {common.host(platform.processor() or platform.machine())}; torch "
      f"{torch.__version__} ({torch.get_num_threads()} threads, "
      f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})"
      + (f"; jax {__import__('jax').__version__}" if jax_steps else "")
  )
  print(
      f"# {arch} width {args.width}, {args.image_size} px, batch "
      f"{args.batch_size}, queue {args.queue_size}; median of {args.steps} "
      f"alternating steps after {args.warmup} warm-up"
  )
  print(
      f"# load average (1/5/15 min) before timing "
      f"{common.load_average(load_before)}, after "
      f"{common.load_average(load)}"
  )
  table = common.Table(
      [
          ("side", "<16", ""),
          ("step_s", ">8", ".3f"),
          ("cpu_s", ">8", ".3f"),
          ("x torch", ">8", ".2f"),
          ("cpu x torch", ">11", ".2f"),
      ]
  )
  print(table.header())
  for name in runners:
    print(
        table.row(
            name,
            med[name],
            med_cpu[name],
            row["ratio_over_torch"][name],
            row["cpu_ratio_over_torch"][name],
        ),
        flush=True,
    )
  common.write_json(args.json, row)
  return row


if __name__ == "__main__":
  # The library's CPU convolution choice, as its command-line tools make it.
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  maskcon_jax.prefer_eigen_cpu_convolutions()
  main()
