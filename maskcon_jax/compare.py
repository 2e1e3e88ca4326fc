r"""Trains several modes at the same budget and seeds and tabulates them.

  python -m maskcon_jax.compare --config configs/default.py \
      --modes maskcon,moco,grafit:w=1.0,coins,untrained --workdir runs/compare
  python -m maskcon_jax.compare --config configs/default.py \
      --modes 'maskcon:w=0.5|1.0:t=0.05|0.1,moco' --seeds 1228,1229,1230 \
      --reference moco --workdir runs/compare --config.num_epochs=20

Each entry of ``--modes`` is ``MODE[:FIELD=VALUE[:FIELD=VALUE...]]``: a mode
of `maskcon_jax.methods.METHODS` plus config overrides for that mode only
(``grafit:w=1.0``, ``maskcon:t=0.1:w=0.8``; a dotted FIELD reaches a nested
field, e.g. a method's block: ``saliency:saliency.strategy=mean``; the flat
names of older configs, ``saliency:saliency_strategy=mean``, still work and
keep their workdir names; each FIELD at most once). Values are Python
literals where they parse as one; an entry whose value holds a comma (a
tuple) is double-quoted inside the list:
``--modes='moco,"saliency:saliency.query_ratio=(0.0,0.1)"'``. ``--config.*`` overrides
apply to every mode, the method blocks (`configuration.add_defaults`)
included, as in ``maskcon_jax.train``.

Grids: ``FIELD=V1|V2|...`` gives one run per value, and several such fields
give their cartesian product, each cell its own row and workdir:
``maskcon:w=0.5|1.0:t=0.05|0.1`` is four entries, ``maskcon (w=0.5,
t=0.05)``, ``maskcon (w=0.5, t=0.1)``, ``maskcon (w=1.0, t=0.05)`` and
``maskcon (w=1.0, t=0.1)`` (the first field varies slowest). Quote the
argument in a shell, where ``|`` is a pipe.

``untrained`` is a pseudo-mode: the freshly initialised query encoder of the
shared config (its mode's architecture, or ``untrained:mode=wcl``'s) at each
seed, evaluated before any training step by `trainer.evaluate_untrained`. It
takes FIELD=VALUE overrides as the others do; its row shows what training
adds.

An entry may name its own seeds instead of ``--seeds``: ``wcl:seeds=1228``
(or ``seeds=1228+1229``), e.g. one seed for the costly modes of a table
whose others have three; it names the same runs (folders) as ``--seeds``.

Every (entry, seed) run trains in its own ``WORKDIR/<entry>/seed_<seed>/``
(`directory_name`) with `trainer.train_and_evaluate`, then
`evaluate.run_evaluation` adds kNN top-1, MAP@R and a linear probe.
Rerunning the command resumes unfinished runs and skips finished ones whose
saved config is unchanged (an optional field absent from an older
config.json counts as its default).

Statistics, per entry and metric: mean ± sample std (ddof=1) over seeds, and
the paired difference to the reference entry (``--reference``, default: the
first ``maskcon`` entry, else the first entry): the mean over the seeds both
entries have of (entry - reference) at the same seed, ± its standard error,
the sample std of those differences / sqrt(n). Runs of one seed share its
data order and, with the same architecture, its initialisation; pairing
removes what that shared part adds to the seed-to-seed spread, so it can
resolve differences the two stds cannot.

Writes ``WORKDIR/comparison.md`` (the tables, also printed),
``WORKDIR/comparison.png`` (fine Recall@1 per entry: one dot per seed, mean
± std, the untrained encoder as a dashed line; the value axis zoomed to the
data) and ``WORKDIR/comparison.json`` (the rows, per-seed numbers included).
Wall times are per seed, with the machine they were measured on
(`machine_description`; a run resumed on another machine names both).
``--noevaluate`` skips the extra evaluation (kNN, MAP@R, the probe and R@K
beyond the config's ``retrieval_ks`` then read n/a), which on large training
splits can take longer than a short training run.

Exit status: 0 done; 2 a problem to fix, one ``error: ...`` line on stderr
(checked for every mode and seed before any training); 75 stopped by SIGTERM
or SIGINT after a checkpoint, rerun to resume.

The statistics, tables and figure are in `compare_report`. This module is
still over 600 lines (about 800) because the grid syntax (entries, value
grids, per-entry seeds, workdir names that stay stable across versions) and
the runner that expands, skips, trains and gathers it are one contract,
tested together in tests/test_compare.py.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import platform
import re
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402

import maskcon_jax  # noqa: E402
from maskcon_jax import checkpoints  # noqa: E402
from maskcon_jax import compare_report  # noqa: E402
from maskcon_jax import configuration  # noqa: E402
from maskcon_jax import evaluate as evaluate_lib  # noqa: E402
from maskcon_jax import methods  # noqa: E402
from maskcon_jax import models  # noqa: E402
from maskcon_jax import trainer  # noqa: E402
from maskcon_jax import workdir_io  # noqa: E402
from maskcon_jax.errors import ConfigError, Interrupted, UserError  # noqa: E402

# As maskcon_jax.train: EX_TEMPFAIL, a checkpoint was saved; rerun to resume.
EXIT_INTERRUPTED = 75
MARKDOWN_FILE = "comparison.md"
PLOT_FILE = "comparison.png"
JSON_FILE = "comparison.json"
# Per-run bookkeeping next to the run's results.json: wall time spent on it by
# this harness and the machines it ran on, kept so a skipped (already
# finished) run still reports them.
TIMING_FILE = "comparison_timing.json"


UNTRAINED = compare_report.UNTRAINED
METRICS = compare_report.METRICS
# Separates a field's values in a grid entry: maskcon:w=0.5|1.0.
GRID_SEPARATOR = "|"
# An entry's own seeds instead of --seeds: wcl:seeds=1228 (or 1228+1229).
SEEDS_FIELD = "seeds"


def available_modes() -> tuple[str, ...]:
  """The modes of the method registry, read when called.

  Looked up at run time rather than copied, so methods added to
  `maskcon_jax.methods.METHODS` are accepted without touching this module.
  """
  return tuple(methods.METHODS)


def _parse_value(raw: str) -> Any:
  # Python literals (1.0, 5, (1, 2), None, True) as typed; lower-case booleans
  # as on the command line; anything else is a string.
  lowered = raw.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  try:
    return ast.literal_eval(raw.strip())
  except (ValueError, SyntaxError):
    return raw.strip()


def _split_spec(spec: str) -> tuple[str, list[tuple[str, list[str]]]]:
  """``(mode, [(field, [raw value, ...]), ...])`` of an entry, syntax-checked.

  Raises:
    UserError: an unknown mode, ``|`` in the mode, a malformed or repeated
      override, or an empty or repeated alternative.
  """
  parts = [p.strip() for p in spec.strip().split(":")]
  mode = parts[0]
  if GRID_SEPARATOR in mode:
    raise UserError(
        f"--modes: {spec!r} has '|' in its mode; '|' separates "
        "the values of one FIELD (maskcon:w=0.5|1.0), and commas "
        "separate modes (maskcon,moco)."
    )
  modes = available_modes()
  if mode not in modes and mode != UNTRAINED:
    raise UserError(
        f"--modes: unknown mode {mode!r} in {spec!r}; available: "
        f"{', '.join(modes)}, {UNTRAINED}."
    )
  fields, seen = [], set()
  for part in parts[1:]:
    field, sep, raw = part.partition("=")
    field = field.strip()
    if not sep or not field or not raw.strip():
      raise UserError(
          f"--modes: {part!r} in {spec!r} is not FIELD=VALUE; "
          "write e.g. grafit:w=1.0."
      )
    # The untrained encoder has no mode of its own: mode= picks whose
    # architecture it initialises.
    if field == "mode" and mode != UNTRAINED:
      raise UserError(
          f"--modes: {spec!r} sets the mode twice; write the mode "
          "first and only config fields after it."
      )
    if field in seen:
      raise UserError(
          f"--modes: {spec!r} sets {field} twice; give it once, "
          f"with several values as {field}=0.5|1.0."
      )
    seen.add(field)
    if field == SEEDS_FIELD and GRID_SEPARATOR in raw:
      raise UserError(
          f"--modes: {spec!r} lists seeds with '|'; join them "
          f"with '+' (one row over the seeds), e.g. "
          f"{SEEDS_FIELD}=1228+1229."
      )
    values = [v.strip() for v in raw.split(GRID_SEPARATOR)]
    if not all(values):
      raise UserError(
          f"--modes: {part!r} in {spec!r} has an empty value; "
          f"separate non-empty values with '|', e.g. "
          f"{field}=0.5|1.0."
      )
    parsed = [_parse_value(v) for v in values]
    for i, value in enumerate(parsed):
      # 1 and 1.0 are one value of a float field: two workdirs, one run.
      if any(value == other for other in parsed[:i]):
        raise UserError(
            f"--modes: {part!r} in {spec!r} lists {values[i]!r} "
            "twice; list each value once."
        )
    fields.append((field, values))
  return mode, fields


def parse_mode_spec(spec: str) -> tuple[str, dict[str, Any]]:
  """Splits ``MODE[:FIELD=VALUE...]`` into the mode and its overrides.

  Args:
    spec: e.g. ``"grafit:w=1.0"``; ``MODE`` may also be `UNTRAINED`. One run
      only: see `expand_mode_spec` for grids (``w=0.5|1.0``).

  Returns:
    ``(mode, {field: value})``; values are Python literals where they parse
    as one, else strings.

  Raises:
    UserError: an unknown mode, a malformed override, or a grid.
  """
  mode, fields = _split_spec(spec)
  if any(len(values) > 1 for _, values in fields):
    raise UserError(
        f"--modes: {spec!r} is a grid of several runs; expand it "
        "with compare.expand_mode_spec."
    )
  return mode, {field: _parse_value(values[0]) for field, values in fields}


def expand_mode_spec(spec: str) -> list[tuple[str, str, dict[str, Any]]]:
  """The runs of one ``--modes`` entry, grids expanded.

  Args:
    spec: ``MODE[:FIELD=V1|V2...[:FIELD=...]]``, e.g.
      ``"maskcon:w=0.5|1.0:t=0.05|0.1"``.

  Returns:
    ``[(cell_spec, mode, overrides), ...]`` over the cartesian product of the
    fields' values, the first field varying slowest. ``cell_spec`` is the
    single-run entry of that cell (``"maskcon:w=0.5:t=0.05"``); an entry
    without ``|`` is its own cell, kept as written so its workdir name does
    not change.

  Raises:
    UserError: as `parse_mode_spec`, grids aside.
  """
  mode, fields = _split_spec(spec)
  if all(len(values) == 1 for _, values in fields):
    return [
        (
            spec.strip(),
            mode,
            {field: _parse_value(values[0]) for field, values in fields},
        )
    ]
  cells = []
  for combo in itertools.product(*(values for _, values in fields)):
    names = [field for field, _ in fields]
    cell_spec = ":".join([mode] + [f"{n}={v}" for n, v in zip(names, combo)])
    cells.append(
        (cell_spec, mode, {n: _parse_value(v) for n, v in zip(names, combo)})
    )
  return cells


def run_label(mode: str, overrides: dict[str, Any]) -> str:
  """The table's name of a mode entry, e.g. ``grafit (w=1.0)``."""
  if not overrides:
    return mode
  return f"{mode} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"


def directory_name(spec: str) -> str:
  """The folder of a single-run entry's runs under the comparison's workdir.

  Keeps the overrides in the name (so ``grafit`` and ``grafit:w=1.0`` never
  share a workdir) but only with characters that are safe in paths
  everywhere: ``grafit:w=1.0`` -> ``grafit_w=1.0``.
  """
  name = re.sub(r"[^A-Za-z0-9._=-]+", "_", spec.strip().replace(":", "_"))
  return name.strip("._") or "run"


def _set_field(
    config: ml_collections.ConfigDict, field: str, value: Any, spec: str
) -> None:
  *parents, leaf = field.split(".")
  node = config
  try:
    for name in parents:
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise KeyError(field)
    node[leaf] = value
  except KeyError:
    raise UserError(
        f"--modes: {spec!r} overrides config.{field}, which the "
        "config does not have."
    ) from None
  except (TypeError, ValueError):
    expected = type(node[leaf]).__name__
    raise UserError(
        f"--modes: {spec!r} sets config.{field}={value!r}, but "
        f"that field takes {expected} values."
    ) from None


def _block_field(field: str) -> str:
  """``block.field`` for a flat method field of older configs
  (``saliency_strategy`` -> ``saliency.strategy``); other fields unchanged."""
  legacy = methods.legacy_fields().get(field)
  return f"{legacy[0]}.{legacy[1]}" if legacy else field


def _parse_modes(modes: str | Sequence[str]) -> list[str]:
  if isinstance(modes, str):
    modes = modes.split(",")
  specs = [m.strip() for m in modes if m.strip()]
  if not specs:
    raise UserError(
        "--modes is empty; name at least one mode, e.g. "
        "--modes=maskcon,moco."
    )
  return specs


def _parse_seeds(
    seeds: Sequence[int | str] | None, config: ml_collections.ConfigDict
) -> list[int]:
  if not seeds:
    return [int(config.seed)]
  parsed = []
  for seed in seeds:
    try:
      parsed.append(int(str(seed).strip()))
    except ValueError:
      raise UserError(
          f"--seeds: {seed!r} is not an integer; write e.g. "
          "--seeds=1228,1229."
      ) from None
  if len(set(parsed)) != len(parsed):
    raise UserError(f"--seeds lists a seed twice: {parsed}.")
  return parsed


def _json_round_trip(value: Any) -> Any:
  # How config.json stores a config (tuples become lists, odd types strings).
  return json.loads(json.dumps(value, default=str))


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _comparable(record: dict[str, Any], *, saved: bool) -> dict[str, Any]:
  """A config as config.json stores it, in a form where equal means the same
  run.

  `configuration.comparable_record`: a method's fields as ``block.field``,
  one left out or None taking its default, flat fields of older runs moved
  into their blocks, other methods' blocks and (for a method without a key
  encoder) the queue's fields left out. A reliability option that
  `configuration.add_defaults` adds means its default when absent or None,
  and a field set to None means what an absent one does (the config files'
  placeholders, read with ``config.get``), so a run saved before such a field
  existed, or before the command line added the optional fields, equals the
  same run saved with them; a field set to another value still differs. The
  one field whose absence means something else, ``conv_padding``, is
  resolved as the trainer records (``saved=False``) and reloads
  (``saved=True``) it.
  """
  filled = configuration.comparable_record(record)
  for name, value in _json_round_trip(
      configuration.RELIABILITY_DEFAULTS
  ).items():
    if filled.get(name) is None:
      filled[name] = value
  if filled.get("conv_padding") is None:
    filled["conv_padding"] = (
        models.LEGACY_CONV_PADDING if saved else models.DEFAULT_CONV_PADDING
    )
  return {name: value for name, value in filled.items() if value is not None}


def _is_finished(run_dir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether ``run_dir`` holds final results of exactly ``config``."""
  results = _read_json(os.path.join(run_dir, trainer.RESULTS_FILE))
  saved = _read_json(os.path.join(run_dir, trainer.CONFIG_FILE))
  if results is None or saved is None:
    return False
  current = _json_round_trip(config.to_dict())
  if _comparable(saved, saved=True) != _comparable(current, saved=False):
    return False
  stop = config.get("stop_after_steps")
  return bool(results.get("complete")) or (
      stop is not None and results.get("step") == stop
  )


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
  """The machine a run's wall time is measured on, in one line: its JAX
  devices (or the CPU), the host's CPU and cores, and the JAX version.

  benchmarks/common.py prints its own machine line: the benchmark of an
  exported encoder runs with this package's imports blocked, so that module
  cannot use this one (nor this package a script folder's module).
  """
  devices = jax.devices()
  host = f"{_cpu_model()}, {os.cpu_count()} cores"
  if devices[0].platform == "cpu":
    where = f"CPU ({host})"
  else:
    where = f"{len(devices)} x {devices[0].device_kind} (host {host})"
  if jax.process_count() > 1:
    where = f"{jax.process_count()} processes, {where}"
  return f"{where}, jax {jax.__version__}"


def _train_one(
    config, run_dir: str, evaluate: bool, untrained: bool = False
) -> dict[str, Any]:
  """Trains (or resumes, or skips) one run and returns its numbers.

  With ``untrained``, evaluates ``config``'s freshly initialised encoder
  instead (`trainer.evaluate_untrained`), skipped alike once finished.
  """
  timing_path = os.path.join(run_dir, TIMING_FILE)
  timing = _read_json(timing_path) or {"wall_seconds": 0.0, "eval_seconds": 0.0}
  trained = False
  if _is_finished(run_dir, config):
    logging.info("%s is finished; reusing its results.", run_dir)
    results = _read_json(os.path.join(run_dir, trainer.RESULTS_FILE))
  else:
    start = time.time()
    if untrained:
      results = trainer.evaluate_untrained(config, run_dir)
    else:
      results = trainer.train_and_evaluate(config, run_dir)
    timing["wall_seconds"] += time.time() - start
    # A run resumed elsewhere adds its time there: each machine is named.
    machines, machine = timing.setdefault("machines", []), machine_description()
    if machine not in machines:
      machines.append(machine)
    trained = True
    workdir_io.write_json_atomic(timing_path, timing)
  eval_path = os.path.join(run_dir, "eval_test.json")
  report = _read_json(eval_path)
  has_fine = any(k.startswith("fine_") for k in results if k != "fine_metrics")
  if (
      evaluate
      and has_fine
      and (
          trained or report is None or report.get("step") != results.get("step")
      )
  ):
    start = time.time()
    report = evaluate_lib.run_evaluation(run_dir, "test", None, figures=False)
    timing["eval_seconds"] += time.time() - start
    workdir_io.write_json_atomic(timing_path, timing)
  # evaluate reports more K values than training's (up to 10 even where the
  # config's retrieval_ks stop earlier); both score the same features.
  metrics = {**results, **(report or {})}
  return {
      "workdir": run_dir,
      "seed": int(config.seed),
      "step": results.get("step"),
      "complete": results.get("complete"),
      "wall_seconds": round(timing["wall_seconds"], 2),
      "eval_seconds": round(timing["eval_seconds"], 2),
      # Where wall_seconds was spent ([] for a run timed before they were
      # recorded).
      "machines": timing.get("machines", []),
      **{key: metrics.get(key) for key, _ in METRICS},
  }


def _reference_index(
    cells: Sequence[tuple[str, str, dict[str, Any]]], reference: str | None
) -> int:
  """The position in ``cells`` (``(cell_spec, mode, overrides)``) of the
  entry that ``--reference`` names: its single-run spec, its label, or a spec
  with the same mode and values. Default: the first maskcon entry, else the
  first."""
  if reference is None or not str(reference).strip():
    return next(
        (i for i, (_, mode, _) in enumerate(cells) if mode == "maskcon"), 0
    )
  reference = str(reference).strip()
  for i, (cell_spec, mode, overrides) in enumerate(cells):
    if reference in (cell_spec, run_label(mode, overrides)):
      return i
  try:
    wanted = parse_mode_spec(reference)
  except UserError:
    wanted = None
  matches = [
      i
      for i, (_, mode, overrides) in enumerate(cells)
      if wanted == (mode, overrides)
  ]
  if len(matches) == 1:
    return matches[0]
  problem = "matches several of" if matches else "is none of"
  raise UserError(
      f"--reference={reference!r} {problem} the --modes entries; "
      "name one of: "
      f"{', '.join(cell_spec for cell_spec, *_ in cells)}."
  )


def _entry_seeds(value: Any, spec: str) -> list[int]:
  """The seeds of ``seeds=1228`` or ``seeds=1228+1229`` in an entry."""
  parts = value.split("+") if isinstance(value, str) else [value]
  try:
    return _parse_seeds(parts, None)
  except UserError as e:
    raise UserError(f"--modes: {spec!r}: {e}") from None


def _build_configs(
    config: ml_collections.ConfigDict,
    specs: Sequence[str],
    seeds: Sequence[int],
):
  """Every run's config, built and validated before any training starts.

  Returns:
    One ``(entry, cell_spec, mode, overrides, name, runs)`` per row: grids
    expanded, ``runs`` the configs of the seeds, ``name`` their folder.
  """
  plan, names = [], {}
  for spec in specs:
    for cell_spec, mode, overrides in expand_mode_spec(spec):
      run_seeds = seeds
      if SEEDS_FIELD in overrides:
        run_seeds = _entry_seeds(overrides.pop(SEEDS_FIELD), cell_spec)
        # The same run as under --seeds: the seeds name no folder or label.
        cell_spec = ":".join(
            part
            for part in cell_spec.split(":")
            if part.partition("=")[0].strip() != SEEDS_FIELD
        )
      name = directory_name(cell_spec)
      if name in names:
        other_entry, other_cell = names[name]
        if (other_entry, spec) == (other_cell, cell_spec):
          raise UserError(
              f"--modes lists {other_cell!r} and {cell_spec!r}, "
              "which name the same run; list each once."
          )
        raise UserError(
            f"--modes entries {other_entry!r} and {spec!r} both "
            f"hold the run {cell_spec!r}; list each run once."
        )
      names[name] = (spec, cell_spec)
      runs = []
      for seed in run_seeds:
        run_config = config.copy_and_resolve_references()
        if mode != UNTRAINED:
          # The untrained encoder keeps the shared config's mode (whose
          # architecture it initialises) unless mode= overrides it.
          run_config.mode = mode
        # Flat method fields of older specs name their block's field.
        fields = {_block_field(f): v for f, v in overrides.items()}
        if any(f.split(".")[0] not in run_config for f in fields):
          # A method option the config file leaves out (e.g.
          # saliency.strategy on configs/default.py): add the optional fields
          # with their defaults, as the training command line does. Only
          # then, so other runs keep configs equal to their saved config.json.
          configuration.add_defaults(run_config)
        for field, value in fields.items():
          _set_field(run_config, field, value, cell_spec)
        run_config.seed = seed
        try:
          configuration.validate_config(run_config)
        except ConfigError as e:
          raise UserError(f"--modes entry {cell_spec!r}: {e}") from None
        runs.append(run_config)
      plan.append((spec, cell_spec, mode, overrides, name, runs))
  return plan


def run_comparison(
    config: ml_collections.ConfigDict,
    modes: str | Sequence[str],
    workdir: str,
    seeds: Sequence[int | str] | None = None,
    *,
    evaluate: bool = True,
    reference: str | None = None,
) -> list[dict[str, Any]]:
  """Trains every mode at every seed and writes the comparison files.

  Args:
    config: the shared config (e.g. configs/default.py with command-line
      overrides); each run copies it, so it is not modified.
    modes: entries ``MODE[:FIELD=VALUE...]`` (grids ``FIELD=V1|V2`` and the
      pseudo-mode `UNTRAINED` included, see the module doc), as a list or
      one comma-separated string, e.g. ``["maskcon", "grafit:w=1.0"]``.
    workdir: where the runs (``<entry>/seed_<seed>/``) and the comparison
      files go.
    seeds: training seeds; ``[config.seed]`` if None or empty.
    evaluate: also run `evaluate.run_evaluation` on each run for kNN top-1,
      MAP@R, the linear probe and Recall@K up to 10.
    reference: the entry the paired differences are taken against: a
      single-run spec (``"maskcon:w=0.5"``, also one cell of a grid) or a
      row label; None: the first maskcon entry, else the first entry.

  Returns:
    One dict per entry of ``modes`` (per cell of a grid), in order:
    ``label``, ``spec`` (the cell's single-run spec), ``entry`` (the
    ``--modes`` entry it came from), ``mode``, ``overrides``, ``seeds``,
    ``steps``, ``<metric>_mean`` and ``<metric>_std`` for each metric of
    `METRICS` (std None for one seed, mean None where unavailable),
    ``<metric>_delta_mean``, ``<metric>_delta_se`` and ``<metric>_delta_n``
    (the paired difference to the reference, see `paired_difference`; None
    and 0 on the reference row), ``reference`` (its label),
    ``is_reference``, ``wall_seconds_mean`` and ``runs`` (the per-seed
    numbers with each run's ``workdir``).

  Raises:
    UserError: a bad mode entry, seed, reference, config value or workdir,
      before any training; or a run's own user error, naming the run.
    Interrupted: a run stopped on SIGTERM or SIGINT after saving a
      checkpoint; calling again resumes it.
  """
  specs = _parse_modes(modes)
  seeds = _parse_seeds(seeds, config)
  configuration.check_workdir_writable(workdir)
  plan = _build_configs(config, specs, seeds)
  ref = _reference_index(
      [
          (cell_spec, mode, overrides)
          for _, cell_spec, mode, overrides, *_ in plan
      ],
      reference,
  )
  os.makedirs(workdir, exist_ok=True)

  rows = []
  for entry, spec, mode, overrides, name, run_configs in plan:
    runs = []
    for run_config in run_configs:
      run_dir = os.path.join(workdir, name, f"seed_{run_config.seed}")
      logging.info(
          "Comparison run %s, seed %d in %s.", spec, run_config.seed, run_dir
      )
      try:
        runs.append(
            _train_one(
                run_config, run_dir, evaluate, untrained=mode == UNTRAINED
            )
        )
      except UserError as e:
        raise UserError(f"{spec}, seed {run_config.seed}: {e}") from None
    row = {
        "label": run_label(mode, overrides),
        "spec": spec,
        "entry": entry,
        "mode": mode,
        "overrides": overrides,
        "seeds": [int(c.seed) for c in run_configs],
        "steps": sorted({r["step"] for r in runs if r["step"] is not None}),
        "runs": runs,
    }
    for key, _ in METRICS:
      row[f"{key}_mean"], row[f"{key}_std"] = compare_report.mean_std(
          [r[key] for r in runs]
      )
    row["wall_seconds_mean"] = compare_report.mean_std(
        [r["wall_seconds"] for r in runs]
    )[0]
    rows.append(row)
  compare_report.add_paired_differences(rows, ref)

  table = compare_report.markdown_table(rows)
  with open(os.path.join(workdir, MARKDOWN_FILE), "w") as f:
    f.write(table)
  workdir_io.write_json_atomic(os.path.join(workdir, JSON_FILE), rows)
  compare_report.plot_comparison(rows, os.path.join(workdir, PLOT_FILE))
  return rows


class _WithDefaults(flags.ArgumentParser):
  """``--config``'s loader plus `configuration.add_defaults`, as in
  ``maskcon_jax.train``: every optional field exists before ml_collections
  applies the ``--config.FIELD=VALUE`` overrides, so they may name one the
  config file leaves out."""

  def __init__(self, loader: flags.ArgumentParser):
    self._loader = loader

  def flag_type(self) -> str:
    return self._loader.flag_type()

  def parse(self, argument: str):
    config = self._loader.parse(argument)
    # A file that can't be loaded gives a stand-in that reports the error.
    if isinstance(config, ml_collections.ConfigDict):
      configuration.add_defaults(config)
    return config


def define_flags(
    flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: Sequence[str] | None = None,
) -> None:
  """Defines the command-line flags (only when run as a program).

  Args:
    flag_values: where to define them (a fresh ``FlagValues`` to parse an
      argv in-process).
    sys_argv: the argv ``--config.FIELD`` overrides are read from (default
      ``sys.argv``).
  """
  # Imported here: config_flags registers nothing until called.
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config",
      None,
      "Training configuration file shared by all modes.",
      flag_values=flag_values,
      lock_config=True,
      sys_argv=None if sys_argv is None else list(sys_argv),
  )
  flag_values["config"].parser = _WithDefaults(flag_values["config"].parser)
  flags.DEFINE_string(
      "workdir",
      None,
      "Directory for the runs and the comparison files.",
      flag_values=flag_values,
  )
  flags.DEFINE_list(
      "modes",
      None,
      "Comma-separated MODE[:FIELD=VALUE...] entries, e.g. "
      "maskcon,moco,grafit:w=1.0,coins. FIELD=V1|V2 runs each value, several "
      "such fields their cartesian product ('maskcon:w=0.5|1.0:t=0.05|0.1': "
      "4 rows; quote it in a shell). 'untrained' (also with :FIELD=VALUE) "
      "adds the freshly initialised encoder of the config as a row.",
      flag_values=flag_values,
  )
  flags.DEFINE_list(
      "seeds",
      None,
      "Comma-separated training seeds; the config's seed if unset.",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "reference",
      None,
      "The entry every row's paired difference (same "
      "seeds) is taken against: a single-run entry such as maskcon:w=0.5 "
      "(also one cell of a grid) or a row label; default the first maskcon "
      "entry, else the first entry.",
      flag_values=flag_values,
  )
  flags.DEFINE_boolean(
      "evaluate",
      True,
      "Also run maskcon_jax.evaluate on "
      "each run (kNN top-1, MAP@R, linear probe, Recall@K up "
      "to 10).",
      flag_values=flag_values,
  )
  flags.mark_flags_as_required(
      ["config", "workdir", "modes"], flag_values=flag_values
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(checkpoints.HideCheckpointChatter())
  flag = flags.FLAGS
  try:
    rows = run_comparison(
        flag.config,
        flag.modes,
        flag.workdir,
        flag.seeds,
        evaluate=flag.evaluate,
        reference=flag.reference,
    )
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except Interrupted as e:
    print(
        f"{e} (the comparison resumes there too)", file=sys.stderr, flush=True
    )
    sys.exit(EXIT_INTERRUPTED)
  print(compare_report.markdown_table(rows), flush=True)
  print(
      f"wrote {os.path.join(flag.workdir, MARKDOWN_FILE)}, "
      f"{os.path.join(flag.workdir, PLOT_FILE)} and "
      f"{os.path.join(flag.workdir, JSON_FILE)}",
      flush=True,
  )


if __name__ == "__main__":
  maskcon_jax.prefer_eigen_cpu_convolutions()  # Before JAX starts.
  define_flags()
  app.run(main)
