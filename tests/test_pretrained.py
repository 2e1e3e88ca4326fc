"""config.init_from: torchvision state dicts and other runs as starting weights.

The torchvision fixtures (tests/fixtures/, written once by
make_torchvision_fixture.py with torch) hold narrow torchvision ResNets with
random weights and the features torchvision's forward gives on fixed inputs;
loaded into our encoder, the same inputs must give the same features. The
tolerance: float32, different convolution algorithms and summation orders,
so max |ours - torchvision| <= 1e-5 x max |torchvision| (measured: 2.5e-7
relative for resnet18, 1.8e-7 for resnet50).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import configuration
from maskcon_jax import methods
from maskcon_jax import pretrained
from maskcon_jax import trainer
from maskcon_jax.errors import ConfigError, UserError
from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures"
R18 = str(FIXTURES / "torchvision_resnet18_w4.npz")
R50 = str(FIXTURES / "torchvision_resnet50_w2.safetensors")
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def forward():
  with np.load(FIXTURES / "torchvision_forward.npz") as data:
    return {k: data[k] for k in data.files}


def _config(arch, width, image_size, **overrides):
  config = tiny.get_config()
  config.arch, config.width, config.image_size = arch, width, image_size
  config.synthetic.image_size = image_size
  for key, value in overrides.items():
    config[key] = value
  return config


def _fresh(config, channels=3, num_coarse=2):
  model = methods.build_encoder(config, num_coarse)
  size = config.image_size
  variables = model.init(
      jax.random.key(0), jnp.zeros((1, size, size, channels)), train=False
  )
  return model, variables["params"], variables["batch_stats"]


def _load(path, config, channels=3):
  model, params, stats = _fresh(config, channels)
  params, stats, report = pretrained.init_variables(path, config, params, stats)
  return model, params, stats, report


def _features(model, params, stats, inputs):
  out = model.apply(
      {"params": params, "batch_stats": stats}, jnp.asarray(inputs), train=False
  )
  return np.asarray(out["features"])


def _assert_matches(ours, theirs):
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(
      ours, theirs, rtol=0, atol=RELATIVE_TOLERANCE * np.abs(theirs).max()
  )


@pytest.mark.slow
def test_resnet18_npz_matches_torchvision_forward(forward):
  # 72 px: torchvision's 7x7 stride-2 stem and max-pool; odd sizes later on.
  config = _config("resnet18", 4, 72)
  model, params, stats, report = _load(R18, config)
  _assert_matches(
      _features(model, params, stats, forward["r18_large_inputs"]),
      forward["r18_large_features"],
  )
  assert "backbone/conv1" in report.loaded and (
      "backbone/layer4_1/BatchNorm_1" in report.loaded
  )
  assert report.dropped == ["fc"]
  summary = report.summary()
  assert "loaded backbone/conv1, backbone/bn1, backbone/layer1_0" in summary
  assert "fresh: classifier, projector" in summary and "dropped: fc" in summary


@pytest.mark.slow
def test_small_images_keep_conv1_fresh_and_load_the_rest(forward):
  config = _config("resnet18", 4, 32)
  model, fresh_params, _ = _fresh(config)
  _, params, stats, report = _load(R18, config)
  # conv1 is the new run's own, as the official small-image model's.
  np.testing.assert_array_equal(
      params["backbone"]["conv1"]["kernel"],
      fresh_params["backbone"]["conv1"]["kernel"],
  )
  assert report.fresh[0].startswith("backbone/conv1 (the 32-px stem)")
  assert "backbone/conv1" not in report.loaded
  # With the official model's replacement conv1, torchvision's features.
  params["backbone"]["conv1"]["kernel"] = np.transpose(
      forward["r18_small_conv1"], (2, 3, 1, 0)
  )
  _assert_matches(
      _features(model, params, stats, forward["r18_small_inputs"]),
      forward["r18_small_features"],
  )


@pytest.mark.slow
def test_resnet50_safetensors_matches_torchvision_forward(forward):
  config = _config("resnet50", 2, 72)
  model, params, stats, report = _load(R50, config)
  _assert_matches(
      _features(model, params, stats, forward["r50_large_inputs"]),
      forward["r50_large_features"],
  )
  assert "backbone/layer1_0/downsample_conv" in report.loaded
  assert "backbone/layer4_2/Conv_2" in report.loaded


def test_safetensors_reader_matches_numpy(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top

  arrays = {
      "a": np.arange(6, dtype=np.float32).reshape(2, 3),
      "b": np.array([1.5, -2.0], np.float16),
      "c": np.array([7], np.int64),
      "d": np.array([0.5, 3.0], ml_dtypes.bfloat16),
  }
  names = {"a": "F32", "b": "F16", "c": "I64", "d": "BF16"}
  header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for key, value in arrays.items():
    data = value.tobytes()
    header[key] = {
        "dtype": names[key],
        "shape": list(value.shape),
        "data_offsets": [offset, offset + len(data)],
    }
    blobs.append(data)
    offset += len(data)
  text = json.dumps(header).encode()
  path = tmp_path / "x.safetensors"
  path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
  read = pretrained.read_safetensors(str(path))
  for key, value in arrays.items():
    np.testing.assert_array_equal(read[key], value)
  # read_state_dict gives float32 for every float type, integers as they are.
  state = pretrained.read_state_dict(str(path))
  assert state["b"].dtype == state["d"].dtype == np.float32
  assert state["c"].dtype == np.int64

  path.write_bytes(b"\x10\x00")
  with pytest.raises(UserError, match="not a valid safetensors file"):
    pretrained.read_safetensors(str(path))
  bad = json.dumps(
      {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}
  ).encode()
  path.write_bytes(len(bad).to_bytes(8, "little") + bad + b"\0" * 8)
  with pytest.raises(UserError, match=r"tensor 'a' has bytes 0\.\.8"):
    pretrained.read_safetensors(str(path))


def _state_dict():
  with np.load(R18) as data:
    return {k: data[k] for k in data.files}


def _save(tmp_path, state_dict, name="sd.npz"):
  path = tmp_path / name
  np.savez(path, **state_dict)
  return str(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, config_kwargs, pattern",
    [
        (
            "arch",
            dict(arch="resnet34", width=4, image_size=72),
            r"holds a torchvision resnet18 \(BasicBlock x 2,2,2,2\), but "
            r"config.arch='resnet34' is a resnet34 \(BasicBlock x 3,4,6,3\): set "
            r"config.arch='resnet18'",
        ),
        (
            "bottleneck",
            dict(arch="resnet50", width=4, image_size=72),
            r"holds a torchvision resnet18 .*config.arch='resnet50'",
        ),
        (
            "width",
            dict(arch="resnet18", width=8, image_size=72),
            r"has width 4 .* but config.width=8: set config.width=4",
        ),
    ],
)
def test_architecture_mismatches_are_one_line_errors(
    case, config_kwargs, pattern
):
  del case
  config = _config(**config_kwargs)
  with pytest.raises(ConfigError, match=pattern) as error:
    _load(R18, config)
  assert "\n" not in str(error.value)


@pytest.mark.slow
def test_state_dict_mismatches_are_one_line_errors(tmp_path):
  config = _config("resnet18", 4, 72)
  sd = _state_dict()

  small_stem = dict(sd, **{"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)})
  with pytest.raises(
      ConfigError,
      match=r"has a 3x3 conv1 \(a small-image "
      r"stem\), but images above 64 px use torchvision's 7x7",
  ):
    _load(_save(tmp_path, small_stem), config)
  missing = {
      k: v for k, v in sd.items() if k != "layer3.0.downsample.1.running_var"
  }
  with pytest.raises(
      ConfigError,
      match=r"lacks 1 key\(s\) of a torchvision "
      r"resnet18: 'layer3.0.downsample.1.running_var'",
  ):
    _load(_save(tmp_path, missing), config)
  extra = dict(sd, **{"projector.0.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(
      ConfigError,
      match=r"has 1 key\(s\) a torchvision "
      r"resnet18 does not: 'projector.0.weight'",
  ):
    _load(_save(tmp_path, extra), config)
  wrapped = {f"module.{k}": v for k, v in sd.items()}
  with pytest.raises(ConfigError, match=r"its keys start with 'module.'"):
    _load(_save(tmp_path, wrapped), config)
  shape = dict(
      sd, **{"layer2.1.conv2.weight": np.zeros((8, 8, 1, 1), np.float32)}
  )
  with pytest.raises(
      ConfigError,
      match=r"layer2_1/Conv_1/kernel of shape "
      r"\(1, 1, 8, 8\), this config needs \(3, 3, 8, 8\)",
  ):
    _load(_save(tmp_path, shape), config)
  # Gray images cannot take an RGB stem (a small-image run would: its conv1
  # stays fresh).
  gray = _config("resnet18", 4, 72, image_channels=1)
  with pytest.raises(
      ConfigError,
      match=r"takes 3-channel images, but this "
      r"run's have 1: set config.image_channels=3",
  ):
    _load(R18, gray, channels=1)
  _load(R18, _config("resnet18", 4, 32, image_channels=1), channels=1)
  with pytest.raises(ConfigError, match="does not exist"):
    _load(str(tmp_path / "nothing.npz"), config)
  with pytest.raises(
      ConfigError,
      match=r"is a directory but not a run to "
      r"start from: .*config.json not found",
  ):
    _load(str(tmp_path), config)
  (tmp_path / "weights.pt").write_bytes(b"")
  with pytest.raises(
      ConfigError, match=r"neither a directory nor a \.npz or " r"\.safetensors"
  ):
    _load(str(tmp_path / "weights.pt"), config)


def test_config_validation():
  config = tiny.get_config()
  configuration.validate_config(config)  # Unset by default.
  config.init_from = R18
  configuration.validate_config(config)
  for bad in (3, ""):
    with pytest.raises(
        ConfigError,
        match=r"config.init_from=.* must be a "
        "run's workdir or a torchvision state dict",
    ):
      configuration.validate_config(
          ml_collections.ConfigDict({**config.to_dict(), "init_from": bad})
      )


# ---------------------------------------------------------------------------
# From another run.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A tiny run (untrained weights at step 0 are weights all the same)."""
  workdir = tmp_path_factory.mktemp("source")
  config = tiny.get_config()
  config.seed = 7
  trainer.evaluate_untrained(config, str(workdir))
  return str(workdir)


@pytest.mark.slow
def test_from_run_copies_the_query_encoder(source_run):
  source = pretrained.read_run(source_run)
  assert source.step == 0 and source.channels == 3 and source.num_coarse == 2
  config = tiny.get_config()
  _, params, stats, report = _load(source_run, config)
  for new, old in ((params, source.params), (stats, source.batch_stats)):
    jax.tree.map(np.testing.assert_array_equal, new, old)
  assert "backbone/conv1" in report.loaded and "projector/fc1" in (
      report.loaded
  )
  assert report.fresh == [] and report.kind == "run, step 0"

  # Another number of coarse classes: the classifier stays fresh, the rest
  # is loaded.
  config.synthetic.num_coarse = 4
  model, fresh_params, _ = _fresh(config, num_coarse=4)
  params, _, report = pretrained.init_variables(
      source_run,
      config,
      fresh_params,
      model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)[
          "batch_stats"
      ],
  )
  assert report.fresh == ["classifier"]
  np.testing.assert_array_equal(
      params["classifier"]["kernel"], fresh_params["classifier"]["kernel"]
  )


@pytest.mark.slow
def test_from_run_of_another_architecture_is_one_line_error(source_run):
  config = tiny.get_config()
  config.width = 8
  with pytest.raises(
      ConfigError,
      match=r"is a resnet10 width 4 with the 3x3 "
      r"stem \(8 px\) run, this config is resnet10 width 8",
  ):
    _load(source_run, config)


@pytest.mark.slow
def test_init_state_sets_both_encoders_and_keeps_the_rest(source_run):
  config = tiny.get_config()
  config.init_from = source_run
  exp = trainer.build_experiment(config)
  state = pretrained.init_state(exp.state, config)
  source = pretrained.read_run(source_run)
  jax.tree.map(
      np.testing.assert_array_equal, jax.device_get(state.params), source.params
  )
  jax.tree.map(
      np.testing.assert_array_equal,
      jax.device_get(state.target_params),
      source.params,
  )
  jax.tree.map(
      np.testing.assert_array_equal,
      jax.device_get(state.target_batch_stats),
      source.batch_stats,
  )
  for name in (
      "opt_state",
      "queue_KxD",
      "queue_labels_K",
      "queue_ptr",
      "rng",
      "step",
  ):
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.device_get(getattr(state, name)),
        jax.device_get(getattr(exp.state, name)),
    )
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding == jax.tree.leaves(exp.state.params)[0].sharding


@pytest.mark.slow
def test_training_prefills_with_the_loaded_encoder_and_resumes_without_it(
    source_run, tmp_path, monkeypatch
):
  config = tiny.get_config()
  config.init_from = source_run
  config.stop_after_steps = 2
  workdir = tmp_path / "finetune"
  seen = {}
  prefill = trainer._prefill_queue  # pylint: disable=protected-access

  def spy(state, data, exp):
    seen["target_params"] = jax.device_get(state.target_params)
    return prefill(state, data, exp)

  monkeypatch.setattr(trainer, "_prefill_queue", spy)
  trainer.train_and_evaluate(config, str(workdir))
  jax.tree.map(
      np.testing.assert_array_equal,
      seen["target_params"],
      pretrained.read_run(source_run).params,
  )
  assert json.loads((workdir / "config.json").read_text())["init_from"] == (
      source_run
  )
  # A resumed run has its weights: init_from is not read again, even gone.
  seen.clear()
  config.init_from = str(tmp_path / "moved_away.npz")
  config.stop_after_steps = None
  results = trainer.train_and_evaluate(config, str(workdir))
  assert results["complete"] and not seen


@pytest.mark.slow
def test_cli_bad_init_from_is_one_line_error(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "maskcon_jax.train",
          "--config",
          "configs/tiny.py",
          "--workdir",
          str(workdir),
          f"--config.init_from={tmp_path / 'missing.safetensors'}",
      ],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "does not exist" in errors[0], out.stderr[-2000:]
  assert not workdir.exists()
