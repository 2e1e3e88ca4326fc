"""What the benchmark scripts share: flags, machine lines, tables and JSON.

Imports only the standard library at module level (jax is imported when a
machine line names it), so scripts that must set up their environment before
importing jax or torch (``cpu_step_breakdown.py``, ``torch_reference_step.py``)
can import this module first.
"""

from __future__ import annotations

import json
import os
import platform


def ints(text: str) -> list[int]:
  """Parses a comma-separated flag value into ints (``"8,16"`` -> [8, 16])."""
  return [int(x) for x in text.split(",") if x]


def strs(text: str) -> list[str]:
  """Parses a comma-separated flag value into its non-empty strings."""
  return [x for x in text.split(",") if x]


def add_output_flags(
    parser, smoke_help: str = "one tiny configuration, for CI"
):
  """Adds the flags every script ends with: ``--json`` and ``--smoke``.

  Args:
    parser: an ``argparse.ArgumentParser``.
    smoke_help: what ``--smoke`` runs, for ``--help``.
  """
  parser.add_argument("--json", default=None, help="write results here")
  parser.add_argument("--smoke", action="store_true", help=smoke_help)


def fmt(value, spec: str) -> str:
  """``format(value, spec)``, or ``"-"`` where the value is None."""
  return format(value, spec) if value is not None else "-"


def load_average(load=None) -> str:
  """The 1/5/15-minute load averages as ``"0.50 0.40 0.30"``.

  Args:
    load: three load averages (e.g. an earlier ``os.getloadavg()``); default:
      the current ones.
  """
  if load is None:
    load = os.getloadavg()
  return " ".join(f"{v:.2f}" for v in load)


def host(detail: str | None = None) -> str:
  """``"host NAME (N cpus)"``, with ``", DETAIL"`` inside the parentheses."""
  extra = f", {detail}" if detail else ""
  return f"host {platform.node()} ({os.cpu_count()} cpus{extra})"


def machine(device_count: bool = False) -> str:
  """The first device, the host and the jax version, in one line.

  Args:
    device_count: append ``" xN"`` (the number of devices) to the device.

  Returns:
    E.g. ``"cpu cpu; host box (16 cpus); jax 0.10.0"``.
  """
  import jax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  count = f" x{jax.device_count()}" if device_count else ""
  return (
      f"{device.platform} {getattr(device, 'device_kind', '')}{count}; "
      f"{host()}; jax {jax.__version__}"
  )


def print_machine(device_count: bool = False, load: bool = True) -> str:
  """Prints ``# device: MACHINE[; load average A B C]``; returns MACHINE.

  Args:
    device_count: as for `machine`.
    load: append the current load averages.
  """
  described = machine(device_count)
  print(
      f"# device: {described}"
      + (f"; load average {load_average()}" if load else "")
  )
  return described


def print_load_after() -> tuple[float, float, float]:
  """Prints ``# load average after: A B C``; returns the three values."""
  load = os.getloadavg()
  print(f"# load average after: {load_average(load)}")
  return load


def write_json(path: str | None, data) -> None:
  """Writes ``data`` as indented JSON to ``path``; nothing when it is empty."""
  if path:
    with open(path, "w") as f:
      json.dump(data, f, indent=2)


class Table:
  """A fixed-width text table, one space between columns.

  Each column is ``(header, align, spec)``: ``align`` is an alignment and
  width such as ``">9"`` (right) or ``"<9"`` (left), used for the header and
  every cell; ``spec`` formats the cell's value (``".2f"``, ``""`` for
  ``str``), and a None value prints as ``"-"``.

  Example:
    table = Table([("arch", "<9", ""), ("step_ms", ">9", ".2f")])
    print(table.header())
    print(table.row("resnet18", 12.3456))
  """

  def __init__(self, columns):
    self.columns = list(columns)

  def header(self) -> str:
    """The line of column headers."""
    return " ".join(format(name, align) for name, align, _ in self.columns)

  def row(self, *values) -> str:
    """One line of cells, the values in column order."""
    if len(values) != len(self.columns):
      raise ValueError(f"{len(values)} values for {len(self.columns)} columns")
    return " ".join(
        format(fmt(value, spec), align)
        for value, (_, align, spec) in zip(values, self.columns)
    )
