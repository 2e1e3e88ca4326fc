r"""Trains the official MaskCon code and maskcon_jax side by side, with seeds.

  # torch + torchvision in their own environment (not project requirements):
  python3 -m venv ~/torchenv
  ~/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 tqdm
  git clone https://github.com/MrChenFeng/MaskCon_CVPR2023 ~/MaskCon_CVPR2023
  python benchmarks/official_parity.py --official ~/MaskCon_CVPR2023 \
      --torch_python ~/torchenv/bin/python --workdir runs/parity \
      --modes maskcon,moco,grafit --seeds 1228,1229,1230

The protocol (`configs/official_parity.py` on our side,
`benchmarks/official_parity_torch.py` on the official side):

* Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist``; training subset
  = the first 12,000 of ``numpy.random.default_rng(0).permutation(60000)``,
  test subset = the first 2,000 of ``default_rng(0).permutation(10000)``;
  coarse = tops / footwear / other.
* Input: 28 px, gray repeated to 3 channels, normalised with mean 0.286 and
  std 0.353.
* Model: ResNet-18 with every width divided by 4 (3x3 stride-1 stem of 16
  channels, no max-pool), projection 128 -> 512 -> 256.
* Training: batch 128, queue 4096, t0 0.1, t 0.05, EMA 0.99, SGD lr 0.02,
  momentum 0.9, weight decay 5e-4, 2 warm-up epochs then cosine, 20 epochs.
* Views: key = RandomResizedCrop(28, scale 0.2-1) + flip; query = the same +
  the official CIFAR-10 AutoAugment.
* Evaluation: fine Recall@K on the test subset, the query excluded.

Modes: ``maskcon`` (w = 0.5), ``moco`` (official: maskcon with w = 0),
``grafit`` (w = 1) and ``coins`` (w = 0.5). ``--variants NAME:FIELD=VALUE...``
adds runs of our side with config overrides (the ablations), e.g.
``same_padding:conv_padding=same``.

Every run writes its own result; rerunning the command skips finished runs,
so the table can be filled in several sittings. Runs go seed by seed and
side by side, so a partial table stays balanced. ``--report_only`` prints the
table from what is there.

Statistics: per side, mean and sample standard deviation (ddof 1) over
seeds. The seeds of the two sides are not paired (two frameworks draw
different random numbers from one seed), so the difference of the means has
the pooled standard error ``s_p * sqrt(1/n_a + 1/n_b)`` with
``s_p^2 = ((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)``.

Not part of CI: it needs torch, the official checkout and hours of CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUR_CONFIG = os.path.join(ROOT, "configs", "official_parity.py")
KS = (1, 2, 5, 10)

# mode -> (official --mode, official --w, our compare entry)
MODES = {
    "maskcon": ("maskcon", 0.5, "maskcon:w=0.5"),
    "moco": ("maskcon", 0.0, "moco"),
    "grafit": ("grafit", 1.0, "grafit:w=1.0"),
    "coins": ("coins", 0.5, "coins:w=0.5"),
}


def _read(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def official_result_path(workdir: str, mode: str, seed: int) -> str:
  return os.path.join(workdir, "official", mode, f"seed_{seed}.json")


def run_official(args, mode: str, seed: int) -> None:
  out = official_result_path(args.workdir, mode, seed)
  if os.path.exists(out):
    return
  official_mode, w, _ = MODES[mode]
  log = out[: -len(".json")] + ".log"
  os.makedirs(os.path.dirname(out), exist_ok=True)
  cmd = [
      args.torch_python,
      os.path.join(HERE, "official_parity_torch.py"),
      "--official",
      args.official,
      "--data_dir",
      args.data_dir,
      "--mode",
      official_mode,
      "--w",
      str(w),
      "--seed",
      str(seed),
      "--epochs",
      str(args.epochs),
      "--device",
      args.device,
      "--num_workers",
      str(args.num_workers),
      "--out",
      out,
  ]
  print(f"[official] {mode} seed {seed} -> {out}", flush=True)
  # OpenMP's default spin-waiting makes torch collapse on a machine that
  # anything else shares (BENCHMARKS.md, "How CPU figures here were
  # measured"); passive waiting changes no number, only the wall time.
  env = {**os.environ}
  env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  with open(log, "w") as f:
    subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)


def _ours_dir(workdir: str, variant: str | None) -> str:
  return os.path.join(workdir, "ours" if not variant else f"ours-{variant}")


def run_ours(
    args, entry: str, seed: int, variant: str | None, overrides: list[str]
) -> None:
  workdir = _ours_dir(args.workdir, variant)
  cmd = [
      sys.executable,
      "-m",
      "maskcon_jax.compare",
      "--config",
      OUR_CONFIG,
      "--modes",
      entry,
      "--seeds",
      str(seed),
      "--workdir",
      workdir,
      "--noevaluate",
      f"--config.num_epochs={args.epochs}",
      f"--config.data_dir={args.data_dir}",
  ]
  cmd += [f"--config.{o}" for o in overrides]
  log = os.path.join(workdir, "logs", f"{entry.replace(':', '_')}_{seed}.log")
  os.makedirs(os.path.dirname(log), exist_ok=True)
  print(
      f"[ours{'-' + variant if variant else ''}] {entry} seed {seed}",
      flush=True,
  )
  env = {**os.environ}
  if args.jobs > 1:
    # Several runs share one accelerator: JAX must not take 75% of its
    # memory up front in each process.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  with open(log, "a") as f:
    subprocess.run(
        cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env
    )


def _our_run_dir(workdir, variant, entry, seed):
  from maskcon_jax import compare  # pylint: disable=g-import-not-at-top

  return os.path.join(
      _ours_dir(workdir, variant), compare.directory_name(entry), f"seed_{seed}"
  )


def collect(args, variants) -> dict:
  """Every finished run's Recall@K, keyed by (side, mode) -> seed -> row."""
  table = {}
  for mode in args.modes:
    for seed in args.seeds:
      official = _read(official_result_path(args.workdir, mode, seed))
      if official:
        evals = official["evaluations"]
        table.setdefault(("official", mode), {})[seed] = {
            **evals["final"],
            "seconds": official["train_seconds"] + official["prefill_seconds"],
            "seconds_per_step": official["seconds_per_step"],
        }
        table.setdefault(("official", "untrained"), {})[seed] = evals[
            "untrained"
        ]
      for variant, _ in [(None, [])] + variants:
        side = "ours" if not variant else f"ours-{variant}"
        entry = MODES[mode][2]
        run_dir = _our_run_dir(args.workdir, variant, entry, seed)
        results = _read(os.path.join(run_dir, "results.json"))
        timing = _read(os.path.join(run_dir, "comparison_timing.json"))
        if results and results.get("complete"):
          table.setdefault((side, mode), {})[seed] = {
              **results,
              "seconds": (timing or {}).get("wall_seconds"),
              "seconds_per_step": results.get("train_seconds_this_run", 0)
              / max(results["step"], 1),
          }
        untrained = _read(
            os.path.join(
                _our_run_dir(args.workdir, variant, "untrained", seed),
                "results.json",
            )
        )
        if untrained:
          table.setdefault((side, "untrained"), {})[seed] = untrained
  return table


def mean_std(values):
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
  return mean, math.sqrt(var)


def pooled_standard_error(a, b):
  """Standard error of mean(a) - mean(b) with the pooled variance."""
  na, nb = len(a), len(b)
  if na < 2 or nb < 2:
    return None
  _, sa = mean_std(a)
  _, sb = mean_std(b)
  pooled = ((na - 1) * sa**2 + (nb - 1) * sb**2) / (na + nb - 2)
  return math.sqrt(pooled) * math.sqrt(1 / na + 1 / nb)


def _cell(values):
  mean, std = mean_std(values)
  if mean is None:
    return "-"
  return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def report(args, variants) -> str:
  table = collect(args, variants)
  sides = ["official", "ours"] + [f"ours-{v}" for v, _ in variants]
  lines = [
      "| row | side | seeds | "
      + " | ".join(f"R@{k}" for k in KS)
      + " | s/step | wall (s) |",
      "|" + "---|" * (len(KS) + 5),
  ]
  for mode in ["untrained"] + list(args.modes):
    for side in sides:
      runs = table.get((side, mode), {})
      if not runs:
        continue
      cells = [
          _cell([r[f"fine_recall@{k}"] for r in runs.values()]) for k in KS
      ]
      spstep = mean_std([r.get("seconds_per_step") for r in runs.values()])[0]
      wall = mean_std([r.get("seconds") for r in runs.values()])[0]
      lines.append(
          f"| {mode} | {side} | {len(runs)} | "
          + " | ".join(cells)
          + f" | {common.fmt(spstep, '.3f')} | "
          f"{common.fmt(wall, '.0f')} |"
      )
  lines.append("")
  lines.append(
      "Difference in mean R@1 to the official code (pooled standard "
      "error over both sides' seeds):"
  )
  for mode in ["untrained"] + list(args.modes):
    reference = table.get(("official", mode), {})
    ref = [r["fine_recall@1"] for r in reference.values()]
    for side in sides[1:]:
      runs = table.get((side, mode), {})
      if not runs or not ref:
        continue
      ours = [r["fine_recall@1"] for r in runs.values()]
      diff = mean_std(ours)[0] - mean_std(ref)[0]
      se = pooled_standard_error(ours, ref)
      verdict = ""
      if se is not None:
        verdict = (
            "within one SE or better"
            if diff >= -se
            else "BELOW by more than one SE"
        )
      lines.append(
          f"- {mode}, {side}: {diff:+.4f} (SE "
          f"{common.fmt(se, '.4f')}; n = {len(ours)} vs {len(ref)}) "
          f"{verdict}"
      )
  return "\n".join(lines)


def run_tasks(tasks, jobs: int) -> list[str]:
  """Runs `tasks` in order, `jobs` at a time; returns the failed ones.

  A failed run does not stop the others: each side's table is filled with
  what finished, and a rerun retries only what is missing.
  """

  def attempt(task):
    try:
      task()
      return None
    except subprocess.CalledProcessError as error:
      name = " ".join(str(a) for a in task.args[1:] if a not in (None, []))
      return f"{task.func.__name__} {name}: exit {error.returncode}"

  # One worker runs them strictly in order; more start them in order.
  with concurrent.futures.ThreadPoolExecutor(max(jobs, 1)) as pool:
    outcomes = list(pool.map(attempt, tasks))
  return [o for o in outcomes if o]


def parse_variants(specs):
  variants = []
  for spec in specs:
    name, *overrides = spec.split(":")
    if not name or not overrides or any("=" not in o for o in overrides):
      raise SystemExit(
          f"error: --variants entry {spec!r} is not "
          "NAME:FIELD=VALUE[:FIELD=VALUE...]"
      )
    variants.append((name, overrides))
  return variants


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--official", help="checkout of the official code")
  parser.add_argument(
      "--torch_python",
      default="python3",
      help="a Python with torch and torchvision",
  )
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
  parser.add_argument(
      "--modes", type=common.strs, default=["maskcon", "moco", "grafit"]
  )
  parser.add_argument("--seeds", type=common.ints, default=[1228, 1229, 1230])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--sides", type=common.strs, default=["official", "ours"])
  parser.add_argument(
      "--variants",
      type=common.strs,
      default=[],
      help="NAME:FIELD=VALUE[:...] runs of our side",
  )
  parser.add_argument(
      "--jobs",
      type=int,
      default=1,
      help="runs at a time (a machine with many cores or a "
      "GPU); the order, seed by seed, is kept",
  )
  parser.add_argument(
      "--device",
      default="auto",
      choices=("auto", "cpu", "cuda"),
      help="the official side's device (ours: JAX's default)",
  )
  parser.add_argument(
      "--num_workers",
      type=int,
      default=4,
      help="the official side's DataLoader workers",
  )
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args(argv)
  unknown = [m for m in args.modes if m not in MODES]
  if unknown:
    raise SystemExit(f"error: unknown mode(s) {unknown}; use {list(MODES)}")
  variants = parse_variants(args.variants)

  if not args.report_only:
    if "official" in args.sides and not args.official:
      raise SystemExit(
          "error: --official PATH (a checkout of "
          "MrChenFeng/MaskCon_CVPR2023) is required"
      )
    start = time.time()
    tasks = []
    for seed in args.seeds:
      for mode in args.modes:
        if "official" in args.sides:
          tasks.append(functools.partial(run_official, args, mode, seed))
        if "ours" in args.sides:
          tasks.append(
              functools.partial(run_ours, args, MODES[mode][2], seed, None, [])
          )
        for name, overrides in variants:
          tasks.append(
              functools.partial(
                  run_ours, args, MODES[mode][2], seed, name, overrides
              )
          )
      if "ours" in args.sides:
        tasks.append(
            functools.partial(run_ours, args, "untrained", seed, None, [])
        )
    failures = run_tasks(tasks, args.jobs)
    print(f"all runs done in {time.time() - start:.0f} s", flush=True)
  text = report(args, variants)
  print(f"{common.host()}; load {common.load_average()}")
  print(text)
  with open(os.path.join(args.workdir, "parity.md"), "w") as f:
    f.write(text + "\n")
  if not args.report_only and failures:
    print(
        f"{len(failures)} run(s) failed (their logs say why):",
        *failures,
        sep="\n  ",
    )
    raise SystemExit(1)


if __name__ == "__main__":
  main()
