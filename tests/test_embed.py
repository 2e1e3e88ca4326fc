"""maskcon_jax.embed: any image files through a run's encoder."""

import io
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from maskcon_jax import embed
from maskcon_jax import input_pipeline
from maskcon_jax import train_state as train_state_lib
from maskcon_jax import train_step
from maskcon_jax import trainer
from maskcon_jax.errors import DataError, UserError
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run (checkpoint 0: untrained weights embed all the same) and its
  test images as PNG files, in two folders."""
  workdir = tmp_path_factory.mktemp("run")
  config = tiny.get_config()
  trainer.evaluate_untrained(config, str(workdir))
  images = input_pipeline.load_dataset(config).test_images  # (32, 8, 8, 3)
  folder = tmp_path_factory.mktemp("images")
  for i, image in enumerate(images):
    sub = folder / "a" if i < 16 else folder / "b" / "c"
    sub.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(sub / f"{i:02d}.png")
  return dict(workdir=str(workdir), config=config, images=images, folder=folder)


def _paths(folder):
  return sorted(str(p) for p in folder.rglob("*.png"))


@pytest.mark.slow
def test_embed_files_equals_the_librarys_embedding(run, tmp_path):
  out = tmp_path / "emb.npz"
  arrays = embed.run_embed(run["workdir"], str(run["folder"]), str(out))
  with np.load(out) as data:
    assert set(data.files) == {
        "features",
        "projections",
        "paths",
        "step",
        "workdir",
        "fingerprint",
        "image_size",
        "channels",
        "skipped",
    }
    np.testing.assert_array_equal(data["features"], arrays["features"])
    assert list(data["paths"]) == _paths(run["folder"])  # Recursive, sorted.
    assert int(data["step"]) == 0 and int(data["image_size"]) == 8
    assert int(data["channels"]) == 3 and data["skipped"].shape == (0,)
    assert str(data["workdir"]) == os.path.abspath(run["workdir"])
  # The PNGs hold the test split's pixels: the features are the test-view
  # forward pass of the restored state over the arrays, in one unbatched call.
  exp, state = trainer.load_trained(run["workdir"])
  library = jax.device_get(
      train_step.embed_step(
          train_state_lib.query_variables(state),
          run["images"],
          apply_fn=exp.model.apply,
          image_size=exp.config.image_size,
          mean=exp.dataset.mean,
          std=exp.dataset.std,
      )
  )
  np.testing.assert_allclose(
      arrays["features"], library["features"], rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
      arrays["projections"], library["projection"], rtol=1e-5, atol=1e-5
  )


@pytest.mark.slow
def test_csv_lists_and_single_images(run, tmp_path):
  paths = _paths(run["folder"])
  listing = tmp_path / "list.csv"
  # A header, a relative path, an absolute one and extra columns.
  rel = os.path.relpath(paths[3], tmp_path)
  listing.write_text(f"path,coarse\n{rel},0\n{paths[20]},1\n")
  assert embed.list_images(str(listing)) == [paths[3], paths[20]]
  assert embed.list_images(paths[5]) == [paths[5]]


@pytest.mark.slow
def test_any_size_and_mode_is_read_as_the_dataset_reads_files(run, tmp_path):
  encoder = embed.load_run_encoder(run["workdir"])
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (30, 17), np.uint8)).save(
      tmp_path / "gray.png"
  )
  Image.fromarray(rng.integers(0, 255, (9, 12, 4), np.uint8)).save(
      tmp_path / "rgba.png"
  )
  Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(
      tmp_path / "photo.jpg"
  )
  paths = embed.list_images(str(tmp_path))
  ((_, images),) = embed.read_images(
      paths, image_size=8, channels=3, batch_size=8
  )
  assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
  result = embed.embed_files(encoder, paths)
  assert result["features"].shape == (3, 32)
  # A gray run gets PIL's luma; gray input comes back unchanged.
  ((_, gray),) = embed.read_images(
      [str(tmp_path / "gray.png")], image_size=8, channels=1, batch_size=8
  )
  ((_, rgb),) = embed.read_images(
      [str(tmp_path / "gray.png")], image_size=8, channels=3, batch_size=8
  )
  np.testing.assert_array_equal(gray[..., 0], rgb[..., 0])


@pytest.mark.slow
def test_wrong_image_arrays_are_one_line_errors(run):
  encoder = embed.load_run_encoder(run["workdir"])
  for images, pattern in (
      (np.zeros((2, 16, 16, 3), np.uint8), r"are 16x16 px, the run embeds 8x8"),
      (np.zeros((2, 8, 8, 1), np.uint8), r"have 1 channels, the run's have 3"),
      (
          np.zeros((2, 8, 8, 3), np.float32),
          r"are float32, the run embeds uint8",
      ),
      (np.zeros((8, 8, 3), np.uint8), r"must be an array \(N, 8, 8, 3\)"),
  ):
    with pytest.raises(UserError, match=pattern) as error:
      encoder.embed(images)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_batch_size_is_the_programs(run, monkeypatch):
  """An eval batch that is no multiple of the devices is rounded up, and
  files are read in batches of what the program takes."""
  monkeypatch.setattr(
      embed.pretrained,
      "read_run",
      _with_eval_batch(embed.pretrained.read_run, jax.device_count() + 1),
  )
  encoder = embed.load_run_encoder(run["workdir"])
  assert encoder.batch_size == 2 * jax.device_count()
  assert encoder.batch_size == encoder.embedder.batch_size


def _with_eval_batch(read_run, size):
  def read(*args, **kwargs):
    weights = read_run(*args, **kwargs)
    weights.config.eval_batch_size = size
    return weights

  return read


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(run, tmp_path):
  with pytest.raises(
      UserError,
      match="nothing does not exist: give a "
      "directory written by maskcon_jax.train",
  ):
    embed.run_embed(
        str(tmp_path / "nothing"), str(run["folder"]), str(tmp_path / "x.npz")
    )
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("no images")
  with pytest.raises(UserError, match=r"holds no images .* even in subfolders"):
    embed.run_embed(
        run["workdir"], str(tmp_path / "empty"), str(tmp_path / "x.npz")
    )
  with pytest.raises(UserError, match="does not exist"):
    embed.list_images(str(tmp_path / "missing"))
  (tmp_path / "header_only.csv").write_text("path\n")
  with pytest.raises(UserError, match="lists no images"):
    embed.list_images(str(tmp_path / "header_only.csv"))
  with pytest.raises(UserError, match="neither a folder"):
    embed.list_images(str(tmp_path / "empty" / "notes.txt"))
  assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_undecodable_files_stop_the_run_or_are_skipped(run, tmp_path):
  paths = _paths(run["folder"])[:5]
  broken = tmp_path / "broken.png"
  broken.write_bytes(b"not a png")
  gone = str(tmp_path / "gone.png")
  listed = paths[:2] + [str(broken)] + paths[2:] + [gone]
  listing = tmp_path / "list.csv"
  listing.write_text("\n".join(listed) + "\n")
  with pytest.raises(
      DataError,
      match=r"cannot decode image '.*broken.png' "
      r"\(.*\): delete or replace it, or pass --skip_bad",
  ) as error:
    embed.run_embed(run["workdir"], str(listing), str(tmp_path / "x.npz"))
  assert "\n" not in str(error.value) and "{{" not in str(error.value)
  arrays = embed.run_embed(
      run["workdir"], str(listing), str(tmp_path / "x.npz"), skip_bad=True
  )
  assert list(arrays["paths"]) == paths
  assert list(arrays["skipped"]) == [str(broken), gone]
  assert "skipped 2 undecodable file(s)" in embed.skipped_line(
      list(arrays["skipped"])
  )
  listing.write_text(f"{broken}\n")
  with pytest.raises(DataError, match="none of the 1 images could be decoded"):
    embed.run_embed(
        run["workdir"], str(listing), str(tmp_path / "x.npz"), skip_bad=True
    )


def test_progress_line():
  stream = io.StringIO()
  bar = embed.Progress(1000, min_total=16, stream=stream, interval_s=0.0)
  bar.update_to(500)
  bar.update_to(1000)
  bar.close()
  assert "500/1,000 images (50%" in stream.getvalue()
  assert stream.getvalue().endswith("\n")
  quiet = io.StringIO()
  bar = embed.Progress(10, min_total=16, stream=quiet, interval_s=0.0)
  bar.update_to(10)
  bar.close()
  assert not quiet.getvalue()


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "maskcon_jax.embed", *args],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )


@pytest.mark.slow
def test_cli(run, tmp_path):
  out = tmp_path / "emb.npz"
  ok = _cli(
      "--workdir",
      run["workdir"],
      "--images",
      str(run["folder"]),
      "--out",
      str(out),
  )
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "wrote" in ok.stdout and "32 images, features 32-d" in ok.stdout
  assert out.exists()
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
  bad = _cli(
      "--workdir",
      run["workdir"],
      "--images",
      str(tmp_path / "bad"),
      "--out",
      str(tmp_path / "bad.npz"),
  )
  assert bad.returncode == 2
  errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "x.jpg" in errors[0], bad.stderr[-2000:]
  assert "Traceback" not in bad.stderr
