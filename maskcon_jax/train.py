r"""Trains a contrastive model on coarse labels and evaluates fine retrieval.

  python -m maskcon_jax.train --config configs/default.py --workdir runs/default
  python -m maskcon_jax.train --config configs/default.py --workdir runs/grafit \
      --config.mode=grafit --config.w=1.0

Rerunning the same command on the same workdir resumes from its latest
checkpoint (or only re-evaluates a finished run).

Exit status:
  0   finished (or re-evaluated a finished run).
  2   a problem to fix, described by one ``error: ...`` line on stderr: a bad
      flag or config value, missing or broken data, an unwritable workdir,
      checkpoints of another config or none readable, a non-finite loss.
      Unless training had started, the workdir is left as it was.
  75  stopped by SIGTERM or SIGINT after saving a checkpoint of the current
      step (one ``stopped by ...`` line on stderr); rerun the same command to
      resume. 75 is EX_TEMPFAIL: "try again later".
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from ml_collections.config_flags import config_path  # noqa: E402

import maskcon_jax  # noqa: E402
from maskcon_jax import checkpoints  # noqa: E402
from maskcon_jax import configuration  # noqa: E402
from maskcon_jax import errors  # noqa: E402
from maskcon_jax import methods  # noqa: E402
from maskcon_jax import trainer  # noqa: E402
from maskcon_jax import workdir_io  # noqa: E402
from maskcon_jax.errors import Interrupted, UserError  # noqa: E402

EXIT_ERROR = 2
EXIT_INTERRUPTED = 75

_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    tuple: "a tuple such as '(1, 2)'",
}


class _FlagProblem(ValueError):
  """A command-line mistake whose message is already the one line to print.

  A ValueError, so absl's parser passes it on (wrapped) instead of failing.
  """


def _override_paths(argv: list[str], name: str) -> list[tuple[str, str]]:
  """``(field path, argument)`` of every ``--name.FIELD[=VALUE]`` in argv."""
  found = []
  for arg in argv[1:]:
    match = re.match(rf"^--?(?:no)?{name}\.([^=]+)", arg)
    if match:
      found.append((match.group(1), arg))
  return found


def _field_names(
    config: ml_collections.ConfigDict, prefix: str = ""
) -> list[str]:
  """The dotted paths of the fields (not of the nested ConfigDicts)."""
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      names += _field_names(value, f"{prefix}{key}.")
    else:
      names.append(prefix + key)
  return names


class _ConfigFileParser(flags.ArgumentParser):
  """Loads ``--config``, adds the optional fields, rejects unknown overrides.

  Wraps ml_collections' own parser of the flag. ml_collections would fail on
  ``--config.nope=1`` with a traceback; checking the overridden paths here,
  right after the file is loaded and before the override flags are made,
  turns that into one line.
  """

  def __init__(
      self, name: str, loader: flags.ArgumentParser, sys_argv: list[str] | None
  ):
    self.name = name
    self._loader = loader
    self._sys_argv = sys_argv
    self.config: ml_collections.ConfigDict | None = None

  def flag_type(self) -> str:
    return self._loader.flag_type()

  def parse(self, path: str) -> ml_collections.ConfigDict:
    flag = f"--{self.name}={path}"
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
      raise _FlagProblem(
          f"{flag}: no such file; e.g. " f"--{self.name}=configs/default.py."
      )
    try:
      config = self._loader.parse(path)
    except Exception as e:  # pylint: disable=broad-except
      # A config file is arbitrary Python: any exception means it is broken.
      raise _FlagProblem(
          f"{flag}: cannot load it ({type(e).__name__}: "
          f"{errors.first_line(e)})."
      ) from e
    # ml_collections returns a stand-in holding the error when the file
    # can't be read.
    error = getattr(config, "_error", None)
    if isinstance(error, BaseException):
      raise _FlagProblem(
          f"{flag}: cannot load it ({type(error).__name__}: "
          f"{errors.first_line(error)})."
      )
    if not isinstance(config, ml_collections.ConfigDict):
      raise _FlagProblem(
          f"{flag}: get_config() returned "
          f"{type(config).__name__}, not an "
          "ml_collections.ConfigDict."
      )
    configuration.add_defaults(config)
    argv = sys.argv if self._sys_argv is None else self._sys_argv
    for field, _ in _override_paths(argv, self.name):
      try:
        config_path.get_type(field, config)
      except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        close = difflib.get_close_matches(field, _field_names(config), n=1)
        moved = methods.legacy_fields().get(field)
        if moved:
          close = [".".join(moved)]  # A method field of older configs.
        hint = (
            f"; did you mean {close[0]}?"
            if close
            else "; see that file for the fields."
        )
        raise _FlagProblem(
            f"--{self.name}.{field}: {file} has no field " f"{field!r}{hint}"
        ) from None
    self.config = config
    return config


def define_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: list[str] | None = None,
):
  """Defines ``--config`` (with its ``--config.FIELD`` overrides) and
  ``--workdir`` in ``flag_values``.

  Args:
    flag_values: where to define them (the global ``FLAGS`` for the command
      line; a fresh ``FlagValues`` to parse an argv in-process).
    sys_argv: the argv the overrides are read from (default ``sys.argv``).

  Returns:
    The holders of ``--config`` and ``--workdir``.
  """
  config = config_flags.DEFINE_config_file(
      "config",
      None,
      "Training configuration file.",
      flag_values=flag_values,
      lock_config=True,
      sys_argv=sys_argv,
  )
  flag_values["config"].parser = _ConfigFileParser(
      "config", flag_values["config"].parser, sys_argv
  )
  workdir = flags.DEFINE_string(
      "workdir",
      None,
      "Directory for checkpoints, TensorBoard events and results.json.",
      flag_values=flag_values,
  )
  flags.mark_flags_as_required(["config", "workdir"], flag_values=flag_values)
  return config, workdir


def _flag_error(
    error: Exception, argv: list[str], flag_values: flags.FlagValues
) -> str:
  """The one line that says what is wrong with the command line."""
  problem = error
  while problem is not None:
    if isinstance(problem, _FlagProblem):
      return str(problem)
    problem = problem.__cause__ or problem.__context__
  message = errors.first_line(error)
  required = re.search(
      r"Flag --(\w+) must have a value other than None", message
  )
  if required:
    example = {
        "config": "--config=configs/default.py",
        "workdir": "--workdir=runs/NAME",
    }.get(required.group(1), "")
    return f"--{required.group(1)} is required, e.g. {example}."
  missing = re.match(r"Missing value for flag (--[\w.]+)", message)
  if missing:
    return f"{missing.group(1)} needs a value: {missing.group(1)}=VALUE."
  unknown = re.match(r"Unknown command line flag '([^']+)'", message)
  if unknown:
    return (
        f"unknown flag --{unknown.group(1)}; the flags are --config=FILE, "
        "--workdir=DIR and --config.FIELD=VALUE."
    )
  value = re.match(r"flag --config\.([\w.]+)=", message)
  parser = flag_values["config"].parser if "config" in flag_values else None
  config = getattr(parser, "config", None)
  if value and config is not None:
    field = value.group(1)
    argument = next(
        (arg for path, arg in _override_paths(argv, "config") if path == field),
        f"--config.{field}",
    )
    try:
      wanted = _TYPE_NAMES.get(config_path.get_type(field, config))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
      wanted = None
    if wanted:
      return f"{argument}: expected {wanted}."
  return message.rstrip(".") + "."


def parse_command_line(
    argv: list[str], flag_values: flags.FlagValues = flags.FLAGS
) -> list[str]:
  """Parses ``argv`` into ``flag_values`` (see `define_flags`).

  Returns:
    The positional arguments (argv[0] only: others are an error).

  Raises:
    UserError: one line saying what is wrong with the command line.
  """
  try:
    rest = flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    # absl and ml_collections raise flags.Error, but also KeyError and
    # AttributeError from deep inside; all of them mean a bad command line.
    raise UserError(_flag_error(e, argv, flag_values)) from e
  if len(rest) > 1:
    raise UserError(
        f"unexpected arguments: {' '.join(rest[1:])}; options take "
        "the form --name=value."
    )
  return rest


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Trains and evaluates; returns the exit status (see the module doc).

  User errors and interruptions print one line to stderr instead of a
  traceback.
  """
  try:
    trainer.train_and_evaluate(config, workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_ERROR
  except Interrupted as e:
    print(e, file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED
  return 0


def command_line(argv: list[str]) -> int:
  """The command line in-process, e.g. from a notebook or a test.

  Parses ``argv`` (``argv[0]`` is the program name) into fresh flags, trains
  and returns the exit status, printing what the command line prints.
  """
  flag_values = flags.FlagValues()
  config, workdir = define_flags(flag_values, sys_argv=list(argv))
  try:
    parse_command_line(list(argv), flag_values)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_ERROR
  return run(config.value, workdir.value)


_CONFIG, _WORKDIR = define_flags()


class _LibraryErrorsToDebugLog:
  """Keeps the errors libraries report after a failed write off the console.

  When a checkpoint write fails (a full disk), orbax logs each failed array
  write with a traceback, and TensorStore's callbacks into orbax's closed
  event loop raise "Event loop is closed" in threads, hundreds of times,
  until the process exits. The run itself ends with one ``error:`` line
  (`workdir_io.raise_if_write_failure`); these go to ``WORKDIR/debug.log``,
  which is only created when there is something to keep.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, workdir_io.DEBUG_LOG)

  def _write(self, text: str) -> None:
    try:
      with open(self.path, "a") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    except Exception:  # pylint: disable=broad-except
      pass  # The disk is full, or Python is shutting down: nothing to do.

  def filter(self, record) -> bool:
    if record.levelno < 40 or "/orbax/" not in record.pathname:  # 40: ERROR
      return True
    text = record.getMessage()
    if record.exc_info:
      text += "\n" + "".join(traceback.format_exception(*record.exc_info))
    self._write(
        f"{record.levelname} {record.pathname}:{record.lineno}] " f"{text}"
    )
    return False

  def unraisable(self, unraisable) -> None:
    self._write(
        "".join(
            traceback.format_exception(
                unraisable.exc_type,
                unraisable.exc_value,
                unraisable.exc_traceback,
            )
        )
    )


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return parse_command_line(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_ERROR)


def main(argv: list[str]) -> Any:
  del argv  # Checked by _parse_flags.
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(checkpoints.HideCheckpointChatter())
  to_debug_log = _LibraryErrorsToDebugLog(_WORKDIR.value)
  logging.get_absl_handler().addFilter(to_debug_log)
  sys.unraisablehook = to_debug_log.unraisable
  config = _CONFIG.value
  if config.get("distributed") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # Multi-host. TPU pods and SLURM are detected by JAX; elsewhere set
    # JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    # JAX_PROCESS_ID on every host.
    import jax  # pylint: disable=g-import-not-at-top

    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
      # CPU processes need a collectives backend to run one program together
      # (without one, the CPU client has none); GPUs and TPUs ignore it.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
      kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
      kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
  return run(config, _WORKDIR.value)


if __name__ == "__main__":
  maskcon_jax.prefer_eigen_cpu_convolutions()  # Before JAX starts.
  app.run(main, flags_parser=_parse_flags)
