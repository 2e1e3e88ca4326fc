"""The benchmark scripts' --smoke modes run and print/write what they promise.

Each script is called in-process through its ``main(argv)`` with tiny sizes,
so a change to the library that breaks a benchmark fails here rather than on
the next accelerator run. Timings are not checked, only structure.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import cpu_conv_micro
from benchmarks import eval_throughput
from benchmarks import input_throughput
from benchmarks import search_throughput
from benchmarks import step_throughput
from benchmarks import torch_reference_step
from tests.conftest import REPO_ROOT


def _run(module, tmp_path, capsys, *extra):
  """Runs ``module.main`` in smoke mode; returns (rows, printed, json)."""
  out = tmp_path / "out.json"
  rows = module.main(["--smoke", f"--json={out}", *extra])
  printed = capsys.readouterr().out
  with open(out) as f:
    return rows, printed, json.load(f)


def _positive(*values):
  return all(v is not None and np.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow
def test_step_throughput_smoke(tmp_path, capsys):
  # SelfCon: a method mode's step and multi-exit encoder build the same way
  # (the MaskCon step is timed by test_input_throughput_smoke's step row).
  rows, printed, data = _run(
      step_throughput, tmp_path, capsys, "--modes=selfcon"
  )
  assert [(r["mode"], r["arch"]) for r in data["rows"]] == [
      ("selfcon", "resnet10")
  ]
  for row in data["rows"]:
    assert {"step_ms", "img_s", "gflop_img", "compile_s"} <= set(row)
    assert _positive(row["step_ms"], row["img_s"], row["gflop_img"])
  assert "step_ms" in printed and "# device:" in printed


@pytest.mark.slow
def test_eval_throughput_smoke(tmp_path, capsys):
  rows, printed, data = _run(eval_throughput, tmp_path, capsys)
  assert [r["metric"] for r in rows] == list(eval_throughput.METRICS)
  for row in data["rows"]:
    assert _positive(row["first_s"], row["queries_per_s"], row["py_peak_mb"])
    assert 0.0 <= row["fine_recall_at_1"] <= 1.0
    # The RSS peak is Linux-only; where present it bounds the baseline.
    if row["rss_peak_mb"] is not None:
      assert row["rss_peak_mb"] >= row["rss_base_mb"] * 0.5
  assert "load average" in printed and "rss_peak_mb" in printed


@pytest.mark.slow
def test_input_throughput_smoke(tmp_path, capsys):
  rows, printed, data = _run(
      input_throughput, tmp_path, capsys, "--image_sizes=32"
  )
  (row,) = data["rows"]
  assert row["image_size"] == 32 and row["policies"] == [
      "cifar_strong",
      "cifar_weak",
  ]
  assert _positive(
      row["stream_img_s"],
      row["load_img_s"],
      row["gather_img_s"],
      row["aug_img_s"],
      row["step_img_s"],
  )
  assert row["aug_over_step"] == pytest.approx(
      row["aug_img_s"] / row["step_img_s"]
  )
  assert "aug/step" in printed and "# device:" in printed


@pytest.mark.slow
def test_input_throughput_224_host_side(tmp_path, capsys):
  """The 224 px row: JPEG decode + resize and the Cars views (no step)."""
  _, _, data = _run(
      input_throughput, tmp_path, capsys, "--image_sizes=224", "--skip_step"
  )
  (row,) = data["rows"]
  assert row["source"] == "320x240 jpg" and row["step_img_s"] is None
  assert _positive(row["stream_img_s"], row["aug_img_s"])


def test_torch_reference_step_smoke(tmp_path, capsys):
  pytest.importorskip("torch")
  row, printed, data = _run(
      torch_reference_step, tmp_path, capsys, "--compare_jax"
  )
  assert set(data["step_s"]) == {"torch", "jax:process"}
  assert _positive(*data["step_s"].values(), *data["cpu_s"].values())
  assert data["ratio_over_torch"]["torch"] == 1.0
  assert "x torch" in printed and "load average" in printed


def test_cpu_conv_micro_smoke(tmp_path, capsys):
  pytest.importorskip("torch")
  rows, printed, data = _run(cpu_conv_micro, tmp_path, capsys)
  assert [r["layer"] for r in data["rows"]] == ["stem", "s4"]
  assert all(
      _positive(r["jax_fwd_ms"], r["torch_bwd_ms"], r["ratio"])
      for r in data["rows"]
  )
  assert "ratio" in printed


def test_cpu_conv_micro_jax_side_without_torch(tmp_path, capsys):
  rows, printed, data = _run(
      cpu_conv_micro,
      tmp_path,
      capsys,
      "--no_torch",
      "--kernel_grad=shifted_matmuls",
  )
  assert data["kernel_grad"] == "shifted_matmuls"
  assert all(
      _positive(r["jax_fwd_ms"], r["jax_bwd_ms"]) and r["torch_bwd_ms"] is None
      for r in rows
  )
  assert "kernel gradient shifted_matmuls" in printed


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
def test_shifted_matmul_kernel_grad_matches_xla(stride):
  import jax  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(stride)
  x = rng.normal(size=(3, 8, 8, 5)).astype(np.float32)
  w = rng.normal(size=(3, 3, 5, 4)).astype(np.float32)
  r = rng.normal(size=(3, 8 // stride, 8 // stride, 4)).astype(np.float32)
  padding = ((1, 1), (1, 1))

  def loss(conv):
    return lambda x, w: (conv(x, w, (stride, stride), padding) * r).sum()

  ours = jax.grad(
      loss(cpu_conv_micro.conv_shifted_matmul_kernel_grad), argnums=(0, 1)
  )(x, w)
  xla = jax.grad(loss(cpu_conv_micro._xla_conv), argnums=(0, 1))(x, w)
  for a, b in zip(ours, xla):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_cpu_variants_compile_and_the_import_default():
  """Every CPU variant is a valid per-program option set, and on jaxlib 0.10
  `maskcon_jax.prefer_eigen_cpu_convolutions()` (called by tests/conftest.py
  as by the command-line tools) makes CPU convolutions use Eigen."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxlib import version  # pylint: disable=g-import-not-at-top

  import maskcon_jax  # pylint: disable=g-import-not-at-top

  conv = jax.jit(
      lambda x, w: jax.lax.conv_general_dilated(
          x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
  )
  # XLA keeps very small convolutions (under ~32 channels) out of YNNPACK
  # whatever the options, so the probe has 32.
  lowered = conv.lower(jnp.ones((4, 8, 8, 32)), jnp.ones((3, 3, 32, 32)))
  texts = {
      name: lowered.compile(compiler_options=options).as_text()
      for name, options in step_throughput.CPU_VARIANTS.items()
  }
  if jax.default_backend() != "cpu":
    return
  assert "ynn_fusion" in texts["ynn_conv"]
  assert "ynn_fusion" not in texts["eigen_conv"]
  release = tuple(int(p) for p in version.__version__.split(".")[:2])
  flags = os.environ.get("XLA_FLAGS", "")
  if (
      release == maskcon_jax._CPU_CONV_FLAG_JAXLIB  # pylint: disable=protected-access
      and maskcon_jax._CPU_CONV_FLAG in flags
  ):  # pylint: disable=protected-access
    assert "ynn_fusion" not in texts["process"]


def test_search_throughput_smoke(tmp_path, capsys):
  rows, printed, data = _run(search_throughput, tmp_path, capsys)
  (row,) = data["rows"]
  assert (row["n"], row["dim"], row["queries"], row["k"]) == (2000, 32, 10, 10)
  # Queries are noisy copies of index items: each finds its source first.
  assert row["top1_is_source"] == 1.0 and row["chunk"] == 10
  assert _positive(row["first_s"], row["ms_per_query"], row["bound_mb"])
  assert "bound_mb" in printed and "# device:" in printed


def test_import_leaves_the_environment_unchanged():
  """Importing the package and its modules changes no environment variable;
  the CPU convolution choice is an explicit call."""
  env = {
      k: v
      for k, v in os.environ.items()
      if k not in ("XLA_FLAGS", "MASKCON_JAX_KEEP_XLA_FLAGS")
  }
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  code = (
      "import os, json; before = dict(os.environ)\n"
      "import maskcon_jax, maskcon_jax.methods, maskcon_jax.trainer\n"
      "same = dict(os.environ) == before\n"
      "called = maskcon_jax.prefer_eigen_cpu_convolutions()\n"
      "print(json.dumps([same, called, os.environ['XLA_FLAGS']]))\n"
  )
  out = subprocess.run(
      [sys.executable, "-c", code],
      env=env,
      check=True,
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
  ).stdout
  same, called, flags = json.loads(out.strip().splitlines()[-1])
  assert same
  import maskcon_jax  # pylint: disable=g-import-not-at-top

  assert (maskcon_jax._CPU_CONV_FLAG in flags) == called  # pylint: disable=protected-access


# --- benchmarks/official_parity.py: the statistics and the job runner. -----


def test_parity_statistics_match_numpy():
  from benchmarks import official_parity

  ours, official = [0.72, 0.71, 0.735, 0.70], [0.74, 0.725, 0.73]
  mean, std = official_parity.mean_std(ours + [None])
  assert mean == pytest.approx(np.mean(ours))
  assert std == pytest.approx(np.std(ours, ddof=1))
  na, nb = len(ours), len(official)
  pooled_var = (
      (na - 1) * np.var(ours, ddof=1) + (nb - 1) * np.var(official, ddof=1)
  ) / (na + nb - 2)
  expected = np.sqrt(pooled_var * (1 / na + 1 / nb))
  assert official_parity.pooled_standard_error(ours, official) == (
      pytest.approx(expected)
  )
  assert official_parity.pooled_standard_error(ours, [0.7]) is None


@pytest.mark.parametrize("jobs", [1, 3])
def test_parity_jobs_run_every_task_and_collect_failures(jobs):
  import functools
  import threading
  from benchmarks import official_parity

  done, lock = [], threading.Lock()

  def run_one(args, mode, seed):
    del args
    if seed == 2:
      raise subprocess.CalledProcessError(7, ["train"])
    with lock:
      done.append((mode, seed))

  tasks = [
      functools.partial(run_one, None, mode, seed)
      for seed in (1, 2, 3)
      for mode in ("moco", "grafit")
  ]
  failures = official_parity.run_tasks(tasks, jobs)
  assert sorted(done) == sorted(
      (m, s) for s in (1, 3) for m in ("moco", "grafit")
  )
  assert failures == ["run_one moco 2: exit 7", "run_one grafit 2: exit 7"]


def test_parity_variants_are_checked():
  from benchmarks import official_parity

  assert official_parity.parse_variants(["pad:conv_padding=same:width=8"]) == [
      ("pad", ["conv_padding=same", "width=8"])
  ]
  with pytest.raises(SystemExit, match="NAME:FIELD=VALUE"):
    official_parity.parse_variants(["pad"])
