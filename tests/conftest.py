"""Shared pytest fixtures and environment.

The environment (eight fake CPU devices, so the data-parallel tests run
anywhere) must be set before jax is imported: tests/data/fixture_env.py, the
first import here.
"""

import os
import pathlib
import tempfile

# Tests train the same tiny programs in several processes (CLI runs); a
# persistent compilation cache shared by them saves most of the compile time.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    tempfile.mkdtemp(prefix="maskcon_jax_test_cache_"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Eight fake CPU devices and the command-line tools' CPU convolutions, as
# the stored fixtures were computed (CLI processes inherit XLA_FLAGS).
from tests.data import fixture_env  # noqa: E402,F401  pylint: disable=unused-import

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Losses computed by the official PyTorch code (see its README.md).
GOLDEN_DIR = REPO_ROOT / "tests" / "data" / "golden"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO_ROOT
