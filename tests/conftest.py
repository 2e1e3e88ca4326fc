"""Shared pytest fixtures and environment.

Eight fake CPU devices let the data-parallel tests run anywhere; the flag must
be set before jax is imported, which is why it lives here.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests train the same tiny programs in several processes (CLI runs); a
# persistent compilation cache shared by them saves most of the compile time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="maskcon_jax_test_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The tests (and the CLI processes they start, which inherit XLA_FLAGS) use
# the CPU convolutions the command-line tools choose; the stored fixtures
# (tests/data/step_identity.json, legacy_workdirs.json) were computed so.
import maskcon_jax  # noqa: E402

maskcon_jax.prefer_eigen_cpu_convolutions()

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Losses computed by the official PyTorch code (see its README.md).
GOLDEN_DIR = REPO_ROOT / "tests" / "data" / "golden"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO_ROOT
