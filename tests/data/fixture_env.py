"""The test environment, set before jax is imported.

Imported first by tests/conftest.py and by the fixture scripts of this
folder, so that the stored fixtures and the tests that read them compile the
same programs: eight fake CPU devices (the data-parallel tests run anywhere)
and the CPU convolutions the command-line tools choose.
"""

import os

import maskcon_jax

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
maskcon_jax.prefer_eigen_cpu_convolutions()
