"""export --format stablehlo: a jax.export encoder that runs with jax alone.

Round trip: the deserialised function's features equal the library's
embedding (`embed.RunEncoder.embed`, L2-normalised) of the same uint8 images
for two batch sizes, up to 1e-5 absolute on unit vectors (float32, the same
operations compiled twice; measured differences are ~1e-7).
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import embed
from maskcon_jax import evaluation
from maskcon_jax import export
from maskcon_jax import trainer
from tests.conftest import REPO_ROOT

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
# Makes `import flax`, `import maskcon_jax`, ... fail in a subprocess, so the
# loader is shown to need jax (and numpy) only.
_BLOCK_IMPORTS = """
import sys
class _Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("flax", "maskcon_jax", "optax", "orbax",
                              "tensorflow", "ml_collections"):
      raise ImportError("blocked: " + name)
sys.meta_path.insert(0, _Block())
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  trainer.evaluate_untrained(tiny.get_config(), str(workdir))
  out = tmp_path_factory.mktemp("encoder")
  info = export.run_export_stablehlo(str(workdir), str(out))
  return dict(workdir=str(workdir), out=out, info=info)


def test_round_trip_equals_the_librarys_embedding(exported):
  info = exported["info"]
  assert info["input"]["shape"] == ["batch", 8, 8, 3]
  assert info["output"]["shape"] == ["batch", 32]
  assert set(info["platforms"]) == {"cpu", "cuda"}
  assert json.loads((exported["out"] / "encoder.json").read_text()) == info
  with open(exported["out"] / export.ENCODER_FILE, "rb") as f:
    encoder = jax.export.deserialize(bytearray(f.read()))
  run = embed.load_run_encoder(exported["workdir"])
  rng = np.random.default_rng(0)
  for batch in (1, 37):  # Neither is the eval batch (16) the library pads to.
    images = rng.integers(0, 256, (batch, 8, 8, 3), dtype=np.uint8)
    ours = np.asarray(encoder.call(images))
    library = evaluation.l2_normalize_np(run.embed(images)["features"])
    assert ours.shape == (batch, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, library, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
  with pytest.raises(Exception):  # The exported shape is checked.
    encoder.call(np.zeros((2, 16, 16, 3), np.uint8))


def _readme_loader() -> str:
  readme = (REPO_ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.+?)\n```", readme, re.S)
  (loader,) = [b for b in blocks if "jax.export.deserialize" in b]
  return loader


def test_readme_loader_runs_with_jax_alone(exported):
  code = _readme_loader().replace('"encoder/', f'"{exported["out"]}/')
  out = subprocess.run(
      [
          sys.executable,
          "-c",
          _BLOCK_IMPORTS + code + "\nprint(features.shape, features.dtype)",
      ],
      cwd=exported["out"],
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, "PYTHONPATH": ""},
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith("(4, 32) float32"), out.stdout


def test_cli(exported, tmp_path):
  def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "maskcon_jax.export", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )

  ok = cli(
      "--workdir",
      exported["workdir"],
      "--format",
      "stablehlo",
      "--out",
      str(tmp_path / "enc"),
  )
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "uint8 (N, 8, 8, 3) -> unit-norm features (N, 32)" in ok.stdout
  assert (tmp_path / "enc" / export.ENCODER_FILE).stat().st_size > 0
  bad = cli(
      "--workdir",
      exported["workdir"],
      "--format",
      "stablehlo",
      "--split",
      "train",
      "--out",
      str(tmp_path / "enc2"),
  )
  assert bad.returncode == 2
  errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "--split applies to --format=npz only" in (
      errors[0]
  )
  assert not (tmp_path / "enc2").exists()
  # npz stays the default format.
  npz = cli("--workdir", exported["workdir"], "--out", str(tmp_path / "e.npz"))
  assert npz.returncode == 0, npz.stderr[-2000:]
  with np.load(tmp_path / "e.npz") as data:
    assert data["features"].shape == (32, 32)


def test_throughput_benchmark_runs_on_jax_alone(exported, tmp_path):
  out = tmp_path / "rows.json"
  run = subprocess.run(
      [
          sys.executable,
          "benchmarks/exported_encoder_throughput.py",
          f"--encoder={exported['out']}",
          "--smoke",
          f"--json={out}",
      ],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  (row,) = json.loads(out.read_text())["rows"]
  assert row["batch"] == 8 and row["images_s"] > 0
  assert "images_s" in run.stdout and "# device:" in run.stdout
