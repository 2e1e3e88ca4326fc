"""Shared pytest fixtures and environment.

The environment (eight fake CPU devices, so the data-parallel tests run
anywhere) must be set before jax is imported: tests/data/fixture_env.py, the
first import here.
"""

import os
import pathlib
import shutil
import tempfile

# Tests train the same tiny programs in several processes (CLI runs); a
# persistent compilation cache shared by them saves most of the compile time.
# The session that makes it (pytest's main process; xdist workers and CLI
# runs inherit the variable) removes it at the end: up to ~50 MB a run.
_SESSION_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _SESSION_CACHE_DIR = tempfile.mkdtemp(prefix="maskcon_jax_test_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The suite is compile-bound, and XLA:CPU compiles about twice as fast with
# its backend optimisations off (`jax_disable_most_optimizations`; CLI runs
# inherit it), while the tiny programs run about as fast. The stored-value
# fixtures hold bits of both levels (tests/data/numerics.py).
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs every test fully optimised.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
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


def pytest_unconfigure(config):
  del config  # The directory is this process's, whatever the config.
  if _SESSION_CACHE_DIR is not None:
    shutil.rmtree(_SESSION_CACHE_DIR, ignore_errors=True)
