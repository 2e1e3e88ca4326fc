r"""Trains several modes at the same budget and seeds and tabulates them.

  python -m maskcon_jax.compare --config configs/default.py \
      --modes maskcon,moco,grafit:w=1.0,coins --workdir runs/compare
  python -m maskcon_jax.compare --config configs/default.py \
      --modes maskcon,grafit:w=1.0 --seeds 1228,1229 --workdir runs/compare \
      --config.num_epochs=20

Each entry of ``--modes`` is ``MODE[:FIELD=VALUE[:FIELD=VALUE...]]``: a mode
of `maskcon_jax.train_step.MODES` plus config overrides for that mode only
(``grafit:w=1.0``, ``maskcon:t=0.1:w=0.8``; a dotted FIELD reaches a nested
field). ``--config.*`` overrides apply to every mode. Every (mode, seed) run
trains in its own ``WORKDIR/<entry>/seed_<seed>/`` with
`trainer.train_and_evaluate`, then `evaluate.run_evaluation` adds kNN top-1,
MAP@R and a linear probe.
Rerunning the command resumes unfinished runs and skips finished ones whose
saved config is unchanged.

Writes ``WORKDIR/comparison.md`` (the table, also printed),
``WORKDIR/comparison.png`` (fine Recall@1 per mode, error bars = std over
seeds) and ``WORKDIR/comparison.json`` (the rows, per-seed numbers included).
``--noevaluate`` skips the extra evaluation (kNN, MAP@R, the probe and R@K
beyond the config's ``retrieval_ks`` then read n/a), which on large training splits can take
longer than a short training run.

Exit status: 0 done; 2 a problem to fix, one ``error: ...`` line on stderr
(checked for every mode and seed before any training); 75 stopped by SIGTERM
or SIGINT after a checkpoint, rerun to resume.
"""

from __future__ import annotations

import ast
import json
import logging as pylogging
import math
import os
import re
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from maskcon_jax import configuration  # noqa: E402
from maskcon_jax import evaluate as evaluate_lib  # noqa: E402
from maskcon_jax import trainer  # noqa: E402
from maskcon_jax.errors import ConfigError, Interrupted, UserError  # noqa: E402

# As maskcon_jax.train: EX_TEMPFAIL, a checkpoint was saved; rerun to resume.
EXIT_INTERRUPTED = 75
MARKDOWN_FILE = "comparison.md"
PLOT_FILE = "comparison.png"
JSON_FILE = "comparison.json"
# Per-run bookkeeping next to the run's results.json: wall time spent on it by
# this harness, kept so a skipped (already finished) run still reports it.
TIMING_FILE = "comparison_timing.json"
# The table's metrics: (key in results / eval_test.json, column header).
METRICS = (("fine_recall@1", "fine R@1"), ("fine_recall@5", "fine R@5"),
           ("fine_recall@10", "fine R@10"), ("knn_fine_top1", "kNN top-1"),
           ("fine_map@r", "fine MAP@R"),
           ("linear_probe_fine_top1", "linear probe"))


def available_modes() -> tuple[str, ...]:
  """The modes the training step implements, read when called.

  Looked up at run time rather than copied, so modes added to
  `maskcon_jax.train_step.MODES` are accepted without touching this module.
  """
  from maskcon_jax import train_step
  return tuple(train_step.MODES)


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


def parse_mode_spec(spec: str) -> tuple[str, dict[str, Any]]:
  """Splits ``MODE[:FIELD=VALUE...]`` into the mode and its overrides.

  Args:
    spec: e.g. ``"grafit:w=1.0"``.

  Returns:
    ``(mode, {field: value})``; values are Python literals where they parse
    as one, else strings.

  Raises:
    UserError: an unknown mode or a malformed override.
  """
  parts = [p.strip() for p in spec.strip().split(":")]
  mode, overrides = parts[0], {}
  modes = available_modes()
  if mode not in modes:
    raise UserError(f"--modes: unknown mode {mode!r} in {spec!r}; available: "
                    f"{', '.join(modes)}.")
  for part in parts[1:]:
    field, sep, raw = part.partition("=")
    field = field.strip()
    if not sep or not field or not raw.strip():
      raise UserError(f"--modes: {part!r} in {spec!r} is not FIELD=VALUE; "
                      "write e.g. grafit:w=1.0.")
    if field == "mode":
      raise UserError(f"--modes: {spec!r} sets the mode twice; write the mode "
                      "first and only config fields after it.")
    overrides[field] = _parse_value(raw)
  return mode, overrides


def run_label(mode: str, overrides: dict[str, Any]) -> str:
  """The table's name of a mode entry, e.g. ``grafit (w=1.0)``."""
  if not overrides:
    return mode
  return f"{mode} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"


def _directory_name(spec: str) -> str:
  # Keeps the override in the name (so grafit and grafit:w=1.0 never share a
  # workdir) but only with characters that are safe in paths everywhere.
  name = re.sub(r"[^A-Za-z0-9._=-]+", "_", spec.strip().replace(":", "_"))
  return name.strip("._") or "run"


def _set_field(config: ml_collections.ConfigDict, field: str, value: Any,
               spec: str) -> None:
  *parents, leaf = field.split(".")
  node = config
  try:
    for name in parents:
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise KeyError(field)
    node[leaf] = value
  except KeyError:
    raise UserError(f"--modes: {spec!r} overrides config.{field}, which the "
                    "config does not have.") from None
  except (TypeError, ValueError):
    expected = type(node[leaf]).__name__
    raise UserError(f"--modes: {spec!r} sets config.{field}={value!r}, but "
                    f"that field takes {expected} values.") from None


def _parse_modes(modes: str | Sequence[str]) -> list[str]:
  if isinstance(modes, str):
    modes = modes.split(",")
  specs = [m.strip() for m in modes if m.strip()]
  if not specs:
    raise UserError("--modes is empty; name at least one mode, e.g. "
                    "--modes=maskcon,moco.")
  return specs


def _parse_seeds(seeds: Sequence[int | str] | None,
                 config: ml_collections.ConfigDict) -> list[int]:
  if not seeds:
    return [int(config.seed)]
  parsed = []
  for seed in seeds:
    try:
      parsed.append(int(str(seed).strip()))
    except ValueError:
      raise UserError(f"--seeds: {seed!r} is not an integer; write e.g. "
                      "--seeds=1228,1229.") from None
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


def _is_finished(run_dir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether ``run_dir`` holds final results of exactly ``config``."""
  results = _read_json(os.path.join(run_dir, trainer.RESULTS_FILE))
  saved = _read_json(os.path.join(run_dir, trainer.CONFIG_FILE))
  if results is None or saved is None:
    return False
  if saved != _json_round_trip(config.to_dict()):
    return False
  stop = config.get("stop_after_steps")
  return bool(results.get("complete")) or (
      stop is not None and results.get("step") == stop)


def _train_one(config, run_dir: str, evaluate: bool) -> dict[str, Any]:
  """Trains (or resumes, or skips) one run and returns its numbers."""
  timing_path = os.path.join(run_dir, TIMING_FILE)
  timing = _read_json(timing_path) or {"wall_seconds": 0.0,
                                       "eval_seconds": 0.0}
  trained = False
  if _is_finished(run_dir, config):
    logging.info("%s is finished; reusing its results.", run_dir)
    results = _read_json(os.path.join(run_dir, trainer.RESULTS_FILE))
  else:
    start = time.time()
    results = trainer.train_and_evaluate(config, run_dir)
    timing["wall_seconds"] += time.time() - start
    trained = True
    trainer.write_json_atomic(timing_path, timing)
  eval_path = os.path.join(run_dir, "eval_test.json")
  report = _read_json(eval_path)
  has_fine = any(k.startswith("fine_") for k in results
                 if k != "fine_metrics")
  if evaluate and has_fine and (trained or report is None or
                                report.get("step") != results.get("step")):
    start = time.time()
    report = evaluate_lib.run_evaluation(run_dir, "test", None, figures=False)
    timing["eval_seconds"] += time.time() - start
    trainer.write_json_atomic(timing_path, timing)
  # evaluate reports more K values than training's (up to 10 even where the
  # config's retrieval_ks stop earlier); both score the same features.
  metrics = {**results, **(report or {})}
  return {
      "workdir": run_dir, "seed": int(config.seed),
      "step": results.get("step"), "complete": results.get("complete"),
      "wall_seconds": round(timing["wall_seconds"], 2),
      "eval_seconds": round(timing["eval_seconds"], 2),
      **{key: metrics.get(key) for key, _ in METRICS},
  }


def _mean_std(values: Sequence[float | None]) -> tuple[float | None,
                                                       float | None]:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None, None
  # Sample standard deviation (ddof=1): the spread a new seed would show.
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std


def _build_configs(config: ml_collections.ConfigDict, specs: Sequence[str],
                   seeds: Sequence[int]):
  """Every run's config, built and validated before any training starts."""
  plan, names = [], {}
  for spec in specs:
    mode, overrides = parse_mode_spec(spec)
    name = _directory_name(spec)
    if name in names:
      raise UserError(f"--modes lists {names[name]!r} and {spec!r}, which "
                      "name the same run; list each once.")
    names[name] = spec
    runs = []
    for seed in seeds:
      run_config = config.copy_and_resolve_references()
      run_config.mode = mode
      if any(f.split(".")[0] not in run_config for f in overrides):
        # A method option the config file leaves out (e.g. saliency_strategy
        # on configs/default.py): add the optional fields with their
        # defaults, as the training command line does. Only then, so other
        # runs keep configs equal to their saved config.json.
        configuration.add_defaults(run_config)
      for field, value in overrides.items():
        _set_field(run_config, field, value, spec)
      run_config.seed = seed
      try:
        configuration.validate_config(run_config)
      except ConfigError as e:
        raise UserError(f"--modes entry {spec!r}: {e}") from None
      runs.append(run_config)
    plan.append((spec, mode, overrides, name, runs))
  return plan


def run_comparison(config: ml_collections.ConfigDict,
                   modes: str | Sequence[str], workdir: str,
                   seeds: Sequence[int | str] | None = None, *,
                   evaluate: bool = True) -> list[dict[str, Any]]:
  """Trains every mode at every seed and writes the comparison files.

  Args:
    config: the shared config (e.g. configs/default.py with command-line
      overrides); each run copies it, so it is not modified.
    modes: entries ``MODE[:FIELD=VALUE...]``, as a list or one
      comma-separated string, e.g. ``["maskcon", "grafit:w=1.0"]``.
    workdir: where the runs (``<entry>/seed_<seed>/``) and the comparison
      files go.
    seeds: training seeds; ``[config.seed]`` if None or empty.
    evaluate: also run `evaluate.run_evaluation` on each run for kNN top-1,
      MAP@R, the linear probe and Recall@K up to 10.

  Returns:
    One dict per entry of ``modes``, in order: ``label``, ``spec``,
    ``mode``, ``overrides``, ``seeds``, ``steps``, ``<metric>_mean`` and
    ``<metric>_std`` for each metric of `METRICS` (std None for one seed,
    mean None where unavailable), ``wall_seconds_mean`` and ``runs`` (the
    per-seed numbers with each run's ``workdir``).

  Raises:
    UserError: a bad mode entry, seed, config value or workdir, before any
      training; or a run's own user error, naming the run.
    Interrupted: a run stopped on SIGTERM or SIGINT after saving a
      checkpoint; calling again resumes it.
  """
  specs = _parse_modes(modes)
  seeds = _parse_seeds(seeds, config)
  configuration.check_workdir_writable(workdir)
  plan = _build_configs(config, specs, seeds)
  os.makedirs(workdir, exist_ok=True)

  rows = []
  for spec, mode, overrides, name, run_configs in plan:
    runs = []
    for run_config in run_configs:
      run_dir = os.path.join(workdir, name, f"seed_{run_config.seed}")
      logging.info("Comparison run %s, seed %d in %s.", spec, run_config.seed,
                   run_dir)
      try:
        runs.append(_train_one(run_config, run_dir, evaluate))
      except UserError as e:
        raise UserError(f"{spec}, seed {run_config.seed}: {e}") from None
    row = {"label": run_label(mode, overrides), "spec": spec, "mode": mode,
           "overrides": overrides, "seeds": list(seeds),
           "steps": sorted({r["step"] for r in runs if r["step"] is not None}),
           "runs": runs}
    for key, _ in METRICS:
      row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(
          [r[key] for r in runs])
    row["wall_seconds_mean"] = _mean_std([r["wall_seconds"] for r in runs])[0]
    rows.append(row)

  table = markdown_table(rows)
  with open(os.path.join(workdir, MARKDOWN_FILE), "w") as f:
    f.write(table)
  trainer.write_json_atomic(os.path.join(workdir, JSON_FILE), rows)
  plot_comparison(rows, os.path.join(workdir, PLOT_FILE))
  return rows


def _cell(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "n/a"
  return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """The comparison as a Markdown table with a line saying what it shows."""
  seeds = rows[0]["seeds"] if rows else []
  header = (["mode", "steps"] + [title for _, title in METRICS] +
            ["wall time (s)"])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    cells = [row["label"], "/".join(map(str, row["steps"])) or "n/a"]
    cells += [_cell(row[f"{key}_mean"], row[f"{key}_std"])
              for key, _ in METRICS]
    wall = row["wall_seconds_mean"]
    cells.append("n/a" if wall is None else f"{wall:.0f}")
    lines.append("| " + " | ".join(cells) + " |")
  spread = ("mean ± sample std over seeds " if len(seeds) > 1 else "seed ")
  note = (f"\nFine-label retrieval on the test split; {spread}"
          f"{', '.join(map(str, seeds))}. kNN top-1 uses the training split "
          "as the bank (k = 20); MAP@R ranks each query's R same-class items "
          "(Musgrave et al.); the linear probe is a softmax classifier of "
          "the fine labels on frozen training features. Wall time: seconds in training (compilation, "
          "queue pre-fill, training and its final evaluation), per seed.\n")
  return "\n".join(lines) + "\n" + note


def plot_comparison(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Saves a bar chart of fine Recall@1 per mode (error bars: std)."""
  # Agg canvas directly: no display and no global pyplot state.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  labels = [row["label"] for row in rows]
  means = [row["fine_recall@1_mean"] or 0.0 for row in rows]
  stds = [row["fine_recall@1_std"] or 0.0 for row in rows]
  fig = Figure(figsize=(max(5.0, 1.4 * len(rows) + 1.5), 4.0), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  x = np.arange(len(rows))
  ax.bar(x, means, yerr=stds, capsize=6, color="#4c72b0", alpha=0.85)
  for i, row in enumerate(rows):
    per_seed = [r["fine_recall@1"] for r in row["runs"]
                if r["fine_recall@1"] is not None]
    ax.scatter([i] * len(per_seed), per_seed, color="black", s=12, zorder=3)
    ax.annotate(_cell(row["fine_recall@1_mean"], row["fine_recall@1_std"]),
                (i, means[i] + stds[i]), textcoords="offset points",
                xytext=(0, 4), ha="center", fontsize=9)
  ax.set_xticks(x, labels, rotation=20 if len(rows) > 4 else 0, ha="center")
  ax.set_ylim(0, 1.1)
  ax.set_ylabel("fine Recall@1 (test)")
  seeds = rows[0]["seeds"] if rows else []
  ax.set_title(f"Fine Recall@1, {len(seeds)} seed"
               f"{'s' if len(seeds) != 1 else ''} (dots: single seeds)")
  fig.tight_layout()
  fig.savefig(path)


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  # Imported here: config_flags registers nothing until called.
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Training configuration file shared by all modes.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for the runs and the "
                      "comparison files.")
  flags.DEFINE_list("modes", None, "Comma-separated MODE[:FIELD=VALUE...] "
                    "entries, e.g. maskcon,moco,grafit:w=1.0,coins.")
  flags.DEFINE_list("seeds", None, "Comma-separated training seeds; the "
                    "config's seed if unset.")
  flags.DEFINE_boolean("evaluate", True, "Also run maskcon_jax.evaluate on "
                       "each run (kNN top-1, MAP@R, linear probe, Recall@K up "
                       "to 10).")
  flags.mark_flags_as_required(["config", "workdir", "modes"])


class _HideCheckpointChatter:
  """Drops orbax's per-save INFO records so progress lines stay readable."""

  def filter(self, record) -> bool:
    return (record.levelno >= pylogging.WARNING or
            "/orbax/" not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_HideCheckpointChatter())
  flag = flags.FLAGS
  try:
    rows = run_comparison(flag.config, flag.modes, flag.workdir, flag.seeds,
                          evaluate=flag.evaluate)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except Interrupted as e:
    print(f"{e} (the comparison resumes there too)", file=sys.stderr,
          flush=True)
    sys.exit(EXIT_INTERRUPTED)
  print(markdown_table(rows), flush=True)
  print(f"wrote {os.path.join(flag.workdir, MARKDOWN_FILE)}, "
        f"{os.path.join(flag.workdir, PLOT_FILE)} and "
        f"{os.path.join(flag.workdir, JSON_FILE)}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
