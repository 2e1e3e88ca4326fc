r"""Runs a command-line tool as several JAX processes on this machine.

The CPU stand-in for a multi-host job: each process gets its own fake CPU
devices, all join one `jax.distributed` job over localhost (gloo
collectives), exactly as hosts of a cluster do. Check a multi-host setup here
before booking a cluster::

  python -m maskcon_jax.launch_local --num_processes=2 -- \
      --config configs/digits.py --workdir /tmp/mp --config.num_epochs=1

Everything after ``--`` goes to every process (``maskcon_jax.train`` unless
``--module`` says otherwise). The coordinator's port is a free one; each
process writes its output to ``LOGS/process_<i>.log``; if one process
fails or ``--timeout`` passes, the others are stopped, so a job never hangs.
The exit status is the first non-zero one of the processes (0 when all
succeed).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags

_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")
# Exit status of a process stopped by the launcher (as timeout(1) does).
TIMED_OUT = 124


def free_port() -> int:
  """A TCP port on localhost that nothing listens on right now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(
    process_id: int,
    num_processes: int,
    port: int,
    devices_per_process: int,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
  """The environment of process ``process_id`` of a local job.

  CPU only, ``devices_per_process`` fake devices (replacing any device count
  in ``XLA_FLAGS``, keeping its other options), and the coordinator at
  ``127.0.0.1:port``.
  """
  env = dict(os.environ if base is None else base)
  xla_flags = _DEVICE_COUNT_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
  env["XLA_FLAGS"] = (
      f"{xla_flags} --xla_force_host_platform_device_count="
      f"{devices_per_process}"
  ).strip()
  env.update(
      JAX_PLATFORMS="cpu",
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES=str(num_processes),
      JAX_PROCESS_ID=str(process_id),
  )
  return env


@dataclasses.dataclass
class LocalJob:
  """Processes of one local multi-process job."""

  processes: list[subprocess.Popen]
  log_paths: list[str]

  def logs(self) -> list[str]:
    """Each process's output so far."""
    out = []
    for path in self.log_paths:
      with open(path, errors="replace") as f:
        out.append(f.read())
    return out

  def kill(self, process_id: int, sig: int = signal.SIGKILL) -> None:
    """Sends ``sig`` to one process."""
    if self.processes[process_id].poll() is None:
      self.processes[process_id].send_signal(sig)

  def stop_all(self) -> None:
    for p in self.processes:
      if p.poll() is None:
        p.kill()
    for p in self.processes:
      p.wait()

  def wait(self, timeout: float) -> list[int]:
    """Exit statuses once all processes end; after ``timeout`` seconds, or
    soon after one process fails, the rest are killed (status `TIMED_OUT`
    for those still running at the deadline)."""
    deadline = time.monotonic() + timeout
    failed_at = None
    while any(p.poll() is None for p in self.processes):
      now = time.monotonic()
      if failed_at is None and any(
          p.poll() not in (None, 0) for p in self.processes
      ):
        failed_at = now
      # A peer's failure ends the job: the others would wait in a collective
      # until JAX's heartbeat gives up, minutes later.
      if now > deadline or (failed_at is not None and now > failed_at + 20):
        codes = [
            TIMED_OUT if p.poll() is None and now > deadline else None
            for p in self.processes
        ]
        self.stop_all()
        return [
            c if c is not None else p.returncode
            for c, p in zip(codes, self.processes)
        ]
      time.sleep(0.2)
    return [p.returncode for p in self.processes]


def start(
    args: Sequence[str],
    *,
    num_processes: int = 2,
    devices_per_process: int = 1,
    module: str = "maskcon_jax.train",
    log_dir: str | None = None,
    env: dict[str, str] | None = None,
) -> LocalJob:
  """Starts ``python -m module *args`` as ``num_processes`` JAX processes."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError("num_processes and devices_per_process must be >= 1.")
  log_dir = log_dir or tempfile.mkdtemp(prefix="maskcon_jax_local_job_")
  os.makedirs(log_dir, exist_ok=True)
  port = free_port()
  processes, log_paths = [], []
  for i in range(num_processes):
    path = os.path.join(log_dir, f"process_{i}.log")
    with open(path, "w") as log:
      processes.append(
          subprocess.Popen(
              [sys.executable, "-m", module, *args],
              stdout=log,
              stderr=subprocess.STDOUT,
              stdin=subprocess.DEVNULL,
              env=process_env(i, num_processes, port, devices_per_process, env),
          )
      )
    log_paths.append(path)
  return LocalJob(processes, log_paths)


def run(
    args: Sequence[str], *, timeout: float = 900, **kwargs
) -> tuple[list[int], LocalJob]:
  """`start`, then `LocalJob.wait`: ``(exit statuses, job)``."""
  job = start(args, **kwargs)
  return job.wait(timeout), job


_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "JAX processes.")
_DEVICES = flags.DEFINE_integer(
    "devices_per_process", 1, "Fake CPU devices in each process."
)
_MODULE = flags.DEFINE_string(
    "module", "maskcon_jax.train", "The module every process runs."
)
_TIMEOUT = flags.DEFINE_float("timeout", 3600, "Seconds before all stop.")
_LOG_DIR = flags.DEFINE_string(
    "logs",
    None,
    "Where process_<i>.log go (a new temporary folder if unset).",
)


def main(argv: Sequence[str]) -> int:
  codes, job = run(
      argv[1:],
      num_processes=_NUM_PROCESSES.value,
      devices_per_process=_DEVICES.value,
      module=_MODULE.value,
      timeout=_TIMEOUT.value,
      log_dir=_LOG_DIR.value,
  )
  for i, (code, path, text) in enumerate(zip(codes, job.log_paths, job.logs())):
    tail = "\n".join(text.rstrip().splitlines()[-3:])
    print(f"[process {i}] exit {code}, log {path}\n{tail}", flush=True)
  return next((c for c in codes if c), 0)


if __name__ == "__main__":
  app.run(main)
