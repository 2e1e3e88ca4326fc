"""What the stored-value fixtures key their bits by: the CPU, and digests.

XLA:CPU compiles for the CPU it runs on (vector width, instruction set, the
kernels its libraries pick at run time), so one program's floats can differ
in the last bits between machines. Seen between two of this project's x86-64
VMs: an AMD EPYC Zen 4 and the CPU the first fixtures were written on gave
first-step losses 1e-5 apart (relative), and tiny's 8-device runs (two
images per device, per-device BatchNorm) amplify that to tens of percent
within three steps. So the fixtures keep their bits per CPU (`cpu_identity`),
and tests compare bits only on a CPU that has a record.

They also depend on how far XLA optimises (`xla_optimisation`): training
runs compile fully optimised, the test suite with most optimisations off
(tests/conftest.py; about twice as fast to compile), and the two give
different last bits. So a record also names its level, and a CPU may have
one record at each (`own_record`); `at_a_recorded_level` compiles a test's
programs at a level that can be compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import platform
from typing import Callable, Iterator

import jax
import numpy as np

# Most of XLA's optimisations off: the test suite's setting (tests/conftest.py).
_NO_OPTIMISATIONS = "jax_disable_most_optimizations"
_NO_OPTIMISATIONS_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"

# Instruction-set flags of /proc/cpuinfo that decide what XLA:CPU emits.
_ISA_PREFIXES = ("sse4", "avx", "fma", "amx", "f16c")


def cpu_identity() -> str:
  """The CPU's vendor, family, model and vector extensions, one line."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break  # The first processor is enough.
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    return f"{platform.machine()} {platform.processor()}".strip()
  isa = sorted(
      flag
      for flag in fields.get("flags", "").split()
      if flag.startswith(_ISA_PREFIXES)
  )
  return (
      f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')}"
      f" model {fields.get('model', '?')} ({fields.get('model name', '?')});"
      f" {' '.join(isa)}"
  )


def _host(array) -> np.ndarray:
  return np.asarray(jax.device_get(array))


def digest(array) -> str:
  """sha256 of an array's dtype, shape and bytes."""
  array = _host(array)
  h = hashlib.sha256(f"{array.dtype.str} {array.shape}".encode())
  h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()


def _leaves(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def digests(tree) -> dict[str, str]:
  return {jax.tree_util.keystr(path): digest(x) for path, x in _leaves(tree)}


def xla_optimisation() -> str:
  """The level XLA compiles at now: "full" or "most off"."""
  return "most off" if jax.config.values[_NO_OPTIMISATIONS] else "full"


def record_kind(record_: dict) -> tuple[str | None, str]:
  """A record's CPU and XLA optimisation level."""
  # Records written before levels were recorded are of fully optimised
  # programs.
  return record_["cpu"], record_.get("xla_optimisation", "full")


def own_record(records: list[dict]) -> dict | None:
  """The record of this CPU at the running level, if there is one."""
  kind = (cpu_identity(), xla_optimisation())
  return next((r for r in records if record_kind(r) == kind), None)


def record(runs: dict) -> dict:
  """The running machine's record of ``runs``."""
  return {
      "cpu": cpu_identity(),
      "xla_optimisation": xla_optimisation(),
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "runs": runs,
  }


def add_record(
    path: pathlib.Path, versions: dict, compute: Callable[[], dict]
) -> None:
  """Appends this CPU's `record` of ``compute()``'s runs, at the running
  level, to the fixture at ``path``. Refuses, before computing anything, a
  fixture of other ``versions`` and a second record of this CPU and
  level."""
  stored = json.loads(path.read_text())
  if stored["versions"] != versions:
    raise SystemExit(f"the fixture is of {stored['versions']}.")
  if own_record(stored["records"]) is not None:
    raise SystemExit(
        f"this CPU has a record at XLA optimisation {xla_optimisation()!r}"
        " already."
    )
  stored["records"].append(record(compute()))
  write_json(path, stored)
  print(f"added this CPU's record to {path}")


def write_json(path: pathlib.Path, payload: dict) -> None:
  path.write_text(
      json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n"
  )


@contextlib.contextmanager
def at_a_recorded_level(records: list[dict]) -> Iterator[None]:
  """Compiles at the running level where this CPU has a record of it, and
  otherwise fully optimised, the level of which every recorded CPU has a
  record (the first CPU, not named in its record, is known only by its
  bits, so this is the level that can find them)."""
  if own_record(records) is not None:
    yield
  else:
    with fully_optimised():
      yield


@contextlib.contextmanager
def fully_optimised() -> Iterator[None]:
  """Compiles with XLA's full optimisation inside, in this process and in
  the processes it starts. jit's in-memory caches ignore the setting, so
  they are cleared on the way in and out; the persistent cache keys it."""
  before = jax.config.values[_NO_OPTIMISATIONS]
  before_env = os.environ.get(_NO_OPTIMISATIONS_ENV)
  os.environ[_NO_OPTIMISATIONS_ENV] = "0"
  jax.config.update(_NO_OPTIMISATIONS, False)
  jax.clear_caches()
  try:
    yield
  finally:
    if before_env is None:
      os.environ.pop(_NO_OPTIMISATIONS_ENV, None)
    else:
      os.environ[_NO_OPTIMISATIONS_ENV] = before_env
    jax.config.update(_NO_OPTIMISATIONS, before)
    jax.clear_caches()
