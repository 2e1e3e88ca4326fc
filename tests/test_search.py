"""maskcon_jax.search: query images against an index of maskcon_jax.embed."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from maskcon_jax import embed
from maskcon_jax import evaluation
from maskcon_jax import input_pipeline
from maskcon_jax import search
from maskcon_jax import trainer
from maskcon_jax.errors import UserError
from tests.conftest import REPO_ROOT

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow


def _untrained_run(path, seed):
  config = tiny.get_config()
  config.seed = seed
  trainer.evaluate_untrained(config, str(path))
  return str(path)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
  """A tiny run, its 32 test images as PNGs and their index."""
  workdir = _untrained_run(tmp_path_factory.mktemp("run"), 1228)
  folder = tmp_path_factory.mktemp("images")
  for i, image in enumerate(
      input_pipeline.load_dataset(tiny.get_config()).test_images
  ):
    Image.fromarray(image).save(folder / f"{i:02d}.png")
  index = tmp_path_factory.mktemp("index") / "emb.npz"
  embed.run_embed(workdir, str(folder), str(index))
  return dict(workdir=workdir, folder=folder, index=str(index))


def _brute_force(queries, bank, k):
  sims = (
      evaluation.l2_normalize_np(queries) @ evaluation.l2_normalize_np(bank).T
  )
  order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(sims, order, 1)


def test_nearest_matches_brute_force_in_any_chunk_size():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(300, 16)).astype(np.float32)
  queries = rng.normal(size=(7, 16)).astype(np.float32)
  want_idx, want_sims = _brute_force(queries, bank, 5)
  # 0.01 MB: chunks of 4 queries, so the last chunk is padded.
  assert search.chunk_size_for(300, 0.01) == 4
  for memory_mb in (0.01, search.DEFAULT_MEMORY_MB):
    idx, sims = search.nearest(queries, bank, 5, memory_mb=memory_mb)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
  # Excluding a row (the query itself) keeps the order of the others.
  exclude = want_idx[:, 0].copy()
  exclude[3] = -1
  idx, _ = search.nearest(queries, bank, 5, exclude_Q=exclude)
  want_next, _ = _brute_force(queries, bank, 6)
  np.testing.assert_array_equal(
      np.delete(idx, 3, 0), np.delete(want_next[:, 1:], 3, 0)
  )
  np.testing.assert_array_equal(idx[3], want_idx[3])
  # k beyond the bank: every item, then -1 padding where one was excluded.
  idx, sims = search.nearest(queries[:1], bank[:3], 10, exclude_Q=[0])
  assert idx.shape == (1, 3) and idx[0, -1] == -1 and sims[0, -1] == -np.inf


def test_memory_bound():
  # 1M x 512: four float32 copies of the features plus two chunk buffers.
  n, d = 1_000_000, 512
  chunk = search.chunk_size_for(n)
  assert chunk == 67
  assert search.memory_bound_bytes(n, d, chunk) == 16 * n * d + 8 * chunk * n
  assert search.chunk_size_for(10) == search.MAX_CHUNK


def test_run_search_writes_neighbours_and_grids(indexed, tmp_path):
  query = indexed["folder"] / "05.png"
  out = tmp_path / "results"
  report = search.run_search(indexed["index"], str(query), str(out), k=4)
  assert json.loads((out / "neighbours.json").read_text()) == report
  assert report["step"] == 0 and report["k"] == 4 and report["index_size"] == 32
  (entry,) = report["queries"]
  assert entry["query"] == str(query)
  found = entry["neighbours"]
  assert [n["rank"] for n in found] == [1, 2, 3, 4]
  assert str(query) not in [n["path"] for n in found]  # Itself left out.
  sims = [n["similarity"] for n in found]
  assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
  # The same neighbours as a brute-force search of the index.
  with np.load(indexed["index"]) as data:
    features, paths = data["features"], list(data["paths"])
  want, _ = _brute_force(features[5:6], features, 5)
  assert [n["path"] for n in found] == [paths[j] for j in want[0, 1:]]
  from matplotlib import image  # pylint: disable=g-import-not-at-top

  grid = image.imread(out / entry["grid"])
  assert grid.ndim == 3 and grid.shape[1] > grid.shape[0]
  assert grid[..., :3].std() > 0.05

  report = search.run_search(
      indexed["index"],
      str(indexed["folder"]),
      str(tmp_path / "all"),
      k=3,
      include_self=True,
      grids=False,
  )
  assert len(report["queries"]) == 32
  for entry in report["queries"]:
    assert entry["neighbours"][0]["path"] == entry["query"]
    assert entry["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert "grid" not in entry
  assert not list((tmp_path / "all").glob("*.png"))


def test_index_from_another_run_is_refused(indexed, tmp_path):
  other = _untrained_run(tmp_path / "other", 7)
  query = str(indexed["folder"] / "00.png")
  with pytest.raises(
      UserError,
      match=r"comes from another run: it was made "
      r"by .* step 0 \(encoder [0-9a-f]{16}\), not by "
      r".*other step 0",
  ) as error:
    search.run_search(
        indexed["index"], query, str(tmp_path / "r"), workdir=other
    )
  assert "\n" not in str(error.value)
  with pytest.raises(UserError, match=r"has no checkpoint 5 \(only 0\)"):
    search.run_search(
        indexed["index"], query, str(tmp_path / "r"), checkpoint=5
    )


def test_moved_run_and_bad_indexes(indexed, tmp_path):
  query = str(indexed["folder"] / "00.png")
  # An index made by a run that moved: found again with --workdir.
  copy = tmp_path / "copy"
  shutil.copytree(indexed["workdir"], copy)
  index = tmp_path / "copy.npz"
  embed.run_embed(str(copy), str(indexed["folder"]), str(index))
  shutil.move(copy, tmp_path / "moved")
  with pytest.raises(
      UserError, match=r"which is gone: pass its new place as --workdir"
  ):
    search.run_search(str(index), query, str(tmp_path / "r"))
  report = search.run_search(
      str(index),
      query,
      str(tmp_path / "r"),
      workdir=str(tmp_path / "moved"),
      grids=False,
  )
  assert len(report["queries"][0]["neighbours"]) == 10

  with pytest.raises(UserError, match="does not exist: write one with"):
    search.run_search(str(tmp_path / "none.npz"), query, str(tmp_path / "r"))
  exported = tmp_path / "export.npz"
  np.savez(exported, features=np.zeros((2, 3)), image_ids=np.arange(2))
  with pytest.raises(
      UserError, match=r"an export of a split, which has no image paths"
  ):
    search.run_search(str(exported), query, str(tmp_path / "r"))
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(UserError, match="cannot read --index"):
    search.run_search(str(tmp_path / "junk.npz"), query, str(tmp_path / "r"))
  with pytest.raises(UserError, match="--k=0 must be a positive integer"):
    search.run_search(indexed["index"], query, str(tmp_path / "r"), k=0)
  with pytest.raises(UserError, match="--query=.* does not exist"):
    search.run_search(
        indexed["index"], str(tmp_path / "q.png"), str(tmp_path / "r")
    )


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "maskcon_jax.search", *args],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )


def test_cli(indexed, tmp_path):
  ok = _cli(
      "--index",
      indexed["index"],
      "--query",
      str(indexed["folder"] / "03.png"),
      "--k",
      "3",
      "--out",
      str(tmp_path / "out"),
  )
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "03.png: " in ok.stdout and "wrote" in ok.stdout
  assert (tmp_path / "out" / "neighbours.json").exists()
  assert (tmp_path / "out" / "0000_03.png").exists()
  bad = _cli(
      "--index",
      str(tmp_path / "missing.npz"),
      "--query",
      str(indexed["folder"]),
      "--out",
      str(tmp_path / "out"),
  )
  assert bad.returncode == 2
  errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "missing.npz" in errors[0], bad.stderr[-2000:]
