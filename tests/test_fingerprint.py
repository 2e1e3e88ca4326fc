"""Data fingerprints (maskcon_jax.fingerprint). Resuming onto other data is
refused: tests/test_reliability.py::test_resume_onto_other_data_is_refused."""

from maskcon_jax import fingerprint


def test_file_list_fingerprint_follows_the_files_not_the_folder(tmp_path):
  paths = [f"train/{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
  here = fingerprint.files_digest([f"/data/a/{p}" for p in paths])
  moved = fingerprint.files_digest([f"/mnt/b/{p}" for p in reversed(paths)])
  assert here == moved
  assert here != fingerprint.files_digest([f"/data/a/{p}" for p in paths[:-1]])
