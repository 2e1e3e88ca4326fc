"""Bad input anywhere: one exact ``error:`` line, the workdir untouched.

The table runs the command line in-process (`train.command_line`: the same
parsing, checks and messages as ``python -m maskcon_jax.train``, without
paying a process start per case); two cases also run as real processes to
check the exit status and that no traceback is printed. A property test
throws wide ranges of values, of any type, at the config checks.
"""

import errno
import hashlib
import json
import os
import re
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
import ml_collections
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import configuration
from maskcon_jax import methods
from maskcon_jax import models
from maskcon_jax import train
from maskcon_jax import train_state
from maskcon_jax.errors import UserError
from maskcon_jax.methods import MODES
from tests.conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.py")
FOLDER = str(REPO_ROOT / "configs" / "folder_example.py")
# Cases that get as far as building the state use one device, as
# tests/test_reliability.py does, so they share its compiled programs.
ONE_DEVICE = "--config.num_devices=1"


def _snapshot(path):
  """Every file and folder under ``path`` with a hash of each file's bytes
  (None if ``path`` does not exist; the bytes if it is a file)."""
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    with open(path, "rb") as f:
      return f.read()
  tree = {}
  for root, dirs, files in os.walk(path):
    rel = os.path.relpath(root, path)
    for name in dirs:
      tree[os.path.join(rel, name) + "/"] = None
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        tree[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
  return tree


# --- Workdir and data set-ups: each gets (tmp_path, monkeypatch) and returns
# what the expected message may name.


def _existing_workdir(tmp, _):
  (tmp / "run").mkdir()
  (tmp / "run" / "notes.txt").write_text("mine\n")


def _workdir_is_file(tmp, _):
  (tmp / "run").write_text("not a directory\n")


def _previous_run_of_another_config(tmp, _):
  (tmp / "run").mkdir()
  saved = tiny.get_config()
  saved.arch, saved.width = "resnet18", 8
  (tmp / "run" / "config.json").write_text(json.dumps(saved.to_dict()))


def _unreadable_checkpoints(tmp, _):
  _previous_run(tmp)
  step = tmp / "run" / "checkpoints" / "4"
  step.mkdir(parents=True)
  (step / "_CHECKPOINT_METADATA").write_bytes(os.urandom(64))


def _previous_run(tmp):
  (tmp / "run").mkdir()
  config = tiny.get_config()
  config.num_devices = 1
  (tmp / "run" / "config.json").write_text(json.dumps(config.to_dict()))


def _garbled_config_json(tmp, _):
  (tmp / "run").mkdir()
  (tmp / "run" / "config.json").write_text("{not json")


def _full_disk(tmp, monkeypatch):
  """The first file written into the workdir fails as on a full disk (after
  its temporary copy exists, which must be cleaned up)."""
  _existing_workdir(tmp, monkeypatch)
  replace = os.replace

  def full(src, dst, *args, **kwargs):
    if str(dst).startswith(str(tmp / "run")):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return replace(src, dst, *args, **kwargs)

  monkeypatch.setattr(os, "replace", full)


def _read_only(tmp, monkeypatch):
  """The workdir's parent exists but a file system refuses new folders."""
  makedirs = os.makedirs

  def read_only(path, *args, **kwargs):
    if str(path).startswith(str(tmp / "run")):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    return makedirs(path, *args, **kwargs)

  monkeypatch.setattr(os, "makedirs", read_only)


def _write_png(path, value=100):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)


def _image_folders(
    tmp, *, classes=("cat", "dog"), mapped=("cat", "dog"), broken=None
):
  root = tmp / "images"
  for split in ("train", "test"):
    for name in classes:
      for i in range(2):
        _write_png(str(root / split / name / f"{i}.png"), 40 * i)
  if broken:
    (root / broken).write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
  (root / "coarse.csv").write_text(
      "".join(f"{name},animal\n" for name in mapped)
  )


def _unmapped_class(tmp, _):
  _image_folders(tmp, mapped=("cat",))


def _broken_image(tmp, _):
  _image_folders(tmp, broken="train/dog/1.png")


def _mapped_folders(tmp, _):
  _image_folders(tmp)


def _synthetic_map(tmp, name, rows):
  (tmp / name).write_text("".join(f"{f},{c}\n" for f, c in rows.items()))


def _map_with_unknown_class(tmp, _):
  # tiny's synthetic data has fine classes 'pattern 0' to 'pattern 7'.
  _synthetic_map(
      tmp,
      "map.csv",
      {**{f"pattern {f}": f % 2 for f in range(8)}, "pattern 9": 1},
  )


def _map_with_one_coarse_class(tmp, _):
  _synthetic_map(tmp, "map.csv", {f"pattern {f}": "x" for f in range(8)})


def _previous_run_with_another_map(tmp, _):
  _synthetic_map(tmp, "a.csv", {f"pattern {f}": f % 2 for f in range(8)})
  _synthetic_map(tmp, "b.csv", {f"pattern {f}": f % 4 for f in range(8)})
  (tmp / "run").mkdir()
  saved = tiny.get_config()
  saved.coarse_map = str(tmp / "a.csv")
  (tmp / "run" / "config.json").write_text(json.dumps(saved.to_dict()))


def _previous_selfcon_run(tmp, _):
  # Saved before the method blocks: the exit's position as a flat field.
  (tmp / "run").mkdir()
  saved = {
      **tiny.get_config().to_dict(),
      "mode": "selfcon",
      "selfcon_position": 1,
  }
  (tmp / "run" / "config.json").write_text(json.dumps(saved))


def _bad_config_file(tmp, _):
  (tmp / "bad_config.py").write_text("x = \n")


def _dict_config_file(tmp, _):
  (tmp / "dict_config.py").write_text("def get_config():\n  return {}\n")


def _folder(*extra):
  return [
      "--config",
      FOLDER,
      "--config.data_dir={tmp}/images",
      "--config.coarse_map={tmp}/images/coarse.csv",
      "--config.image_size=8",
      *extra,
  ]


# (case id, argv after the program name, set-up, the one expected line or a
# regex for it). {tmp}: the test's folder; {run}: the workdir; {tiny}: the
# tiny config's path. Every argv has --workdir={run} unless it tests that.
CASES = [
    (
        "int_flag",
        ["--config.batch_size=abc"],
        None,
        "error: --config.batch_size=abc: expected an integer.",
    ),
    (
        "float_flag",
        ["--config.w=abc"],
        None,
        "error: --config.w=abc: expected a number.",
    ),
    (
        "bool_flag",
        ["--config.distributed=maybe"],
        _existing_workdir,
        "error: --config.distributed=maybe: expected true or false.",
    ),
    (
        "unknown_field",
        ["--config.nope=1"],
        _existing_workdir,
        "error: --config.nope: {tiny} has no field 'nope'; see that file for the "
        "fields.",
    ),
    (
        "misspelt_field",
        ["--config.btach_size=3"],
        None,
        "error: --config.btach_size: {tiny} has no field 'btach_size'; did you "
        "mean batch_size?",
    ),
    (
        "unknown_nested_field",
        ["--config.synthetic.nope=3"],
        None,
        "error: --config.synthetic.nope: {tiny} has no field 'synthetic.nope'; "
        "did you mean synthetic.num_coarse?",
    ),
    (
        "flat_method_field",
        ["--config.wcl_graph_weight=2"],
        None,
        "error: --config.wcl_graph_weight: {tiny} has no field "
        "'wcl_graph_weight'; did you mean wcl.graph_weight?",
    ),
    (
        "bad_method_field",
        ["--config.mode=wcl", "--config.wcl.graph_weight=-1"],
        None,
        "error: config.wcl.graph_weight=-1.0 must be a number >= 0.0.",
    ),
    (
        "flag_without_value",
        ["--config.mode"],
        None,
        "error: --config.mode needs a value: --config.mode=VALUE.",
    ),
    (
        "unknown_flag",
        ["--bogus=1"],
        _existing_workdir,
        "error: unknown flag --bogus; the flags are --config=FILE, "
        "--workdir=DIR and --config.FIELD=VALUE.",
    ),
    (
        "positional_argument",
        ["extra"],
        None,
        "error: unexpected arguments: extra; options take the form "
        "--name=value.",
    ),
    (
        "missing_config_file",
        ["--config={tmp}/nope.py"],
        None,
        "error: --config={tmp}/nope.py: no such file; e.g. "
        "--config=configs/default.py.",
    ),
    (
        "config_file_syntax_error",
        ["--config={tmp}/bad_config.py"],
        _bad_config_file,
        "error: --config={tmp}/bad_config.py: cannot load it (SyntaxError: "
        "invalid syntax (bad_config.py, line 1)).",
    ),
    (
        "config_file_not_a_configdict",
        ["--config={tmp}/dict_config.py"],
        _dict_config_file,
        "error: --config={tmp}/dict_config.py: get_config() returned dict, not "
        "an ml_collections.ConfigDict.",
    ),
    (
        "no_workdir",
        ["--workdir="],
        None,
        "error: --workdir is required: name a directory for checkpoints and "
        "results.",
    ),
    (
        "unknown_mode",
        ["--config.mode=simclr"],
        _existing_workdir,
        "error: config.mode='simclr' is not supported; use one of: "
        f"{', '.join(MODES)}.",
    ),
    (
        "w_out_of_range",
        ["--config.w=1.5"],
        None,
        "error: config.w=1.5 must lie in [0, 1] (0 = MoCo, 1 = only the "
        "coarse-aware target).",
    ),
    (
        "zero_temperature",
        ["--config.t0=0"],
        None,
        "error: config.t0=0.0: temperatures must be > 0 (the paper uses t0=0.1, "
        "t=0.05).",
    ),
    (
        "infinite_learning_rate",
        ["--config.learning_rate=inf"],
        None,
        "error: config.learning_rate=inf must be a positive number.",
    ),
    (
        "negative_seed",
        ["--config.seed=-5"],
        None,
        "error: config.seed=-5 must be an integer in [0, 4294967295].",
    ),
    (
        "queue_smaller_than_batch",
        ["--config.queue_size=8"],
        _existing_workdir,
        "error: config.queue_size=8 is smaller than config.batch_size=16; the "
        "queue must hold at least one batch of keys.",
    ),
    (
        "bad_retrieval_ks",
        ["--config.retrieval_ks=0"],
        None,
        "error: config.retrieval_ks=(0,) must be positive integers, e.g. (1, 2, "
        "5, 10).",
    ),
    (
        "negative_max_nonfinite_steps",
        ["--config.max_nonfinite_steps=-1"],
        None,
        "error: config.max_nonfinite_steps=-1 must be an integer >= 0 (0 = "
        "stop at the first non-finite loss).",
    ),
    (
        "batch_not_divisible_by_devices",
        ["--config.batch_size=12"],
        _existing_workdir,
        "error: config.batch_size=12 is not divisible by the 8 devices; use a "
        "multiple of 8.",
    ),
    (
        "batch_exceeds_data",
        ["--config.batch_size=128", "--config.queue_size=256"],
        None,
        "error: config.batch_size=128 exceeds the 64 training examples; use a "
        "smaller batch.",
    ),
    (
        "too_many_devices",
        ["--config.num_devices=16"],
        None,
        "error: config.num_devices=16 but only 8 devices are visible; use fewer "
        "or leave it unset (all devices).",
    ),
    (
        "missing_data_dir",
        _folder("--config.data_dir={tmp}/nowhere"),
        None,
        "error: config.data_dir='{tmp}/nowhere' does not exist: point it at the "
        "folder holding train/<class>/ and test/<class>/.",
    ),
    (
        "folder_without_coarse_map",
        ["--config", FOLDER, "--config.data_dir={tmp}"],
        None,
        "error: config.dataset='folder' needs config.coarse_map: a CSV of "
        'fine,coarse rows or a JSON {{"fine": "coarse"}} file giving each '
        "class folder its coarse class.",
    ),
    (
        "unmapped_class",
        _folder(),
        _unmapped_class,
        "error: Coarse map '{tmp}/images/coarse.csv' leaves 1 class folders "
        "unmapped: 'dog'; add a row for each.",
    ),
    (
        "coarse_map_unknown_class",
        ["--config.coarse_map={tmp}/map.csv"],
        _map_with_unknown_class,
        "error: Coarse map '{tmp}/map.csv' names 1 classes that synthetic does "
        "not have: 'pattern 9'; use its fine class names ('pattern 0', "
        "'pattern 1', 'pattern 2', ...) or indices 0-7.",
    ),
    (
        "coarse_map_one_coarse_class",
        ["--config.coarse_map={tmp}/map.csv"],
        _map_with_one_coarse_class,
        "error: Coarse map '{tmp}/map.csv' puts all 8 fine classes of synthetic "
        "in one coarse class 'x': map them to at least two coarse classes.",
    ),
    (
        "coarse_map_missing",
        ["--config.coarse_map={tmp}/nope.json"],
        None,
        "error: config.coarse_map='{tmp}/nope.json' does not exist: point it at "
        'a CSV of fine,coarse rows or a JSON {{"fine": "coarse"}} file.',
    ),
    (
        "negative_subset_seed",
        ["--config.subset_seed=-1"],
        None,
        "error: config.subset_seed=-1 must be an integer >= 0, or unset to keep "
        "the first examples.",
    ),
    (
        "bad_image_channels",
        ["--config.image_channels=2"],
        None,
        "error: config.image_channels=2 must be 1 (gray), 3 (RGB) or unset (the "
        "dataset's own channels).",
    ),
    (
        "subset_seed_on_streamed_data",
        _folder("--config.in_memory=False", "--config.subset_seed=0"),
        _mapped_folders,
        "error: config.subset_seed=0 needs the data in memory, but "
        "config.dataset='folder' streams: set config.in_memory=True or unset "
        "config.subset_seed.",
    ),
    (
        "resumed_with_another_coarse_map",
        ["--config.coarse_map={tmp}/b.csv"],
        _previous_run_with_another_map,
        "error: the workdir holds a checkpoint of an incompatible config: "
        "coarse_map ('{tmp}/a.csv' -> '{tmp}/b.csv'); use a new --workdir or the "
        "original values.",
    ),
    (
        "old_run_with_another_exit",
        ["--config.mode=selfcon"],
        _previous_selfcon_run,
        "error: the workdir holds a checkpoint of an incompatible config: "
        "selfcon.position (1 -> 2); use a new --workdir or the original values.",
    ),
    (
        "undecodable_image",
        _folder(),
        _broken_image,
        re.compile(
            r"error: Cannot decode image '{tmp}/images/train/dog/1\.png' "
            r"of {tmp}/images/train \(.+\): delete or replace the file "
            r"\(PNG, JPEG, GIF and BMP images are read\)\."
        ),
    ),
    (
        "workdir_is_a_file",
        [],
        _workdir_is_file,
        "error: --workdir={run} is a file, not a directory; choose another "
        "path.",
    ),
    (
        "incompatible_previous_run",
        [],
        _previous_run_of_another_config,
        "error: the workdir holds a checkpoint of an incompatible config: arch "
        "('resnet18' -> 'resnet10'); width (8 -> 4); use a new --workdir or the "
        "original values.",
    ),
    (
        "garbled_config_json",
        [],
        _garbled_config_json,
        "error: {run}/config.json cannot be read (JSONDecodeError: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)); "
        "restore it or use a new --workdir.",
    ),
    (
        "unreadable_checkpoints",
        [ONE_DEVICE],
        _unreadable_checkpoints,
        "error: none of the checkpoints in {run}/checkpoints can be read (steps "
        "4); move that folder away to start over.",
    ),
    (
        "full_disk",
        [ONE_DEVICE],
        _full_disk,
        "error: cannot write to --workdir={run}: No space left on device; free "
        "some space or choose another --workdir.",
    ),
    (
        "read_only_location",
        [ONE_DEVICE],
        _read_only,
        "error: cannot write to --workdir={run}: Read-only file system; choose a "
        "directory you can write to.",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,setup,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gives_one_exact_line_and_leaves_workdir(
    argv, setup, expected, tmp_path, monkeypatch, capsys
):
  run = tmp_path / "run"
  names = {"tmp": str(tmp_path), "run": str(run), "tiny": TINY}
  if setup:
    setup(tmp_path, monkeypatch)
  argv = [a.format(**names) for a in argv]
  if not any(a.startswith("--config=") or a == "--config" for a in argv):
    argv = ["--config", TINY, *argv]
  if not any(a.startswith("--workdir") for a in argv):
    argv = ["--workdir", str(run), *argv]
  before = _snapshot(run)
  capsys.readouterr()

  status = train.command_line(["maskcon_jax.train", *argv])

  monkeypatch.undo()
  assert status == train.EXIT_ERROR
  errors = [
      l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")
  ]
  assert len(errors) == 1, errors
  if isinstance(expected, re.Pattern):
    pattern = expected.pattern.format(
        **{k: re.escape(v) for k, v in names.items()}
    )
    assert re.fullmatch(pattern, errors[0]), errors[0]
  else:
    assert errors[0] == expected.format(**names)
  assert _snapshot(run) == before


@pytest.mark.slow
def test_cli_process_exits_with_one_line(tmp_path):
  """The real command line: status 2, one ``error:`` line, no traceback, for
  a value of the wrong type and an unknown field."""
  for flag, line in (
      (
          "--config.batch_size=abc",
          "error: --config.batch_size=abc: expected an integer.",
      ),
      (
          "--config.nope=1",
          f"error: --config.nope: {TINY} has no field 'nope'; see that file for "
          "the fields.",
      ),
  ):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskcon_jax.train",
            "--config",
            TINY,
            "--workdir",
            str(tmp_path / "run"),
            flag,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == train.EXIT_ERROR
    assert [l for l in out.stderr.splitlines() if l.startswith("error:")] == [
        line
    ]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


# --- Property test: whatever values a config holds, the checks that run
# before training either accept it or raise our one-line errors.

_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 12), max_size=3).map(tuple),
    st.dictionaries(
        st.text("ab", min_size=1, max_size=2), st.integers(), max_size=2
    ),
)
_SMALL_INTS = st.integers(-4, 300)
_NUMBERS = st.one_of(st.floats(-2.0, 2.0), st.integers(-3, 3))


def _field(valid):
  return st.one_of(valid, _JUNK)


_FIELDS = {
    "mode": _field(st.sampled_from(MODES)),
    "w": _field(_NUMBERS),
    "t0": _field(_NUMBERS),
    "t": _field(_NUMBERS),
    "queue_size": _field(_SMALL_INTS),
    "batch_size": _field(_SMALL_INTS),
    "width": _field(_SMALL_INTS),
    "embed_dim": _field(_SMALL_INTS),
    "num_epochs": _field(_SMALL_INTS),
    "image_size": _field(_SMALL_INTS),
    "learning_rate": _field(_NUMBERS),
    "momentum": _field(_NUMBERS),
    "ema_momentum": _field(_NUMBERS),
    "weight_decay": _field(_NUMBERS),
    "warmup_epochs": _field(st.floats(0, 1e300)),
    "seed": _field(st.integers(-5, 2**33)),
    "retrieval_ks": _field(st.lists(_SMALL_INTS, max_size=3).map(tuple)),
    "num_devices": _field(st.integers(-1, 20)),
    "bn_splits": _field(_SMALL_INTS),
    "key_bn": _field(st.sampled_from(("global", "shuffle", "split"))),
    "arch": _field(st.sampled_from(tuple(models.ARCHITECTURES))),
    "precision": _field(st.sampled_from(tuple(models.DTYPES))),
    "stop_after_steps": _field(_SMALL_INTS),
    "max_nonfinite_steps": _field(_SMALL_INTS),
    "debug_nan_at_step": _field(_SMALL_INTS),
    "subset_seed": _field(st.integers(-3, 2**33)),
    "image_channels": _field(st.integers(-1, 4)),
    "coarse_map": _field(st.text(max_size=6)),
    # The method blocks: junk blocks and junk fields of valid blocks.
    "wcl": _field(
        st.fixed_dictionaries(
            {},
            optional={
                "graph_weight": _field(_NUMBERS),
                "same_coarse_nn": _field(st.booleans()),
            },
        )
    ),
    "selfcon": _field(
        st.fixed_dictionaries(
            {},
            optional={
                "position": _field(st.integers(0, 4)),
                "size": _field(st.sampled_from(("fc", "small", "same"))),
                "base_temperature": _field(_NUMBERS),
            },
        )
    ),
    "saliency": _field(
        st.fixed_dictionaries(
            {},
            optional={
                "num_hard_negatives": _field(st.integers(-1, 3)),
                "grid": _field(st.integers(-1, 40)),
                "query_ratio": _field(st.tuples(_NUMBERS, _NUMBERS)),
                "strategy": _field(st.sampled_from(("hp", "blur", "mean"))),
                "alpha": _field(_NUMBERS),
            },
        )
    ),
}
NUM_TRAIN, DEVICES = 64, 8


@pytest.mark.slow
@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.fixed_dictionaries({}, optional=_FIELDS))
# Once overflowed to an infinite warm-up step count (an OverflowError).
@hypothesis.example({"warmup_epochs": 4.49423283715579e307})
def test_config_checks_raise_only_user_errors(changes):
  # Built from a dict, as load_config builds one from config.json: no type
  # checks on the way in, so any value of any type can arrive.
  config = ml_collections.ConfigDict({**tiny.get_config().to_dict(), **changes})
  try:
    configuration.validate_config(config)
    spe = NUM_TRAIN // config.batch_size
    devices = configuration.check_run_layout(
        config, num_train=NUM_TRAIN, steps_per_epoch=spe, device_count=DEVICES
    )
    methods.build_encoder(config, 2)
    schedule = train_state.learning_rate_schedule(config, spe)
    train_state.make_optimizer(config, schedule)
  except UserError as e:
    assert str(e) and "\n" not in str(e)
    return
  # Accepted: what the trainer relies on holds.
  assert config.mode in MODES and 0 <= config.w <= 1
  assert config.t0 > 0 and config.t > 0 and config.learning_rate > 0
  assert spe >= 1 and config.batch_size % devices == 0
  assert config.queue_size >= config.batch_size or not methods.uses_queue(
      config
  )
  assert 0 <= config.seed < 2**32
  assert all(isinstance(k, int) and k >= 1 for k in config.retrieval_ks)
