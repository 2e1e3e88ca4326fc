r"""Starting weights for a run (``config.init_from``) and reading a run's weights.

``--config.init_from=PATH`` starts the query encoder *and* the key encoder from
other weights; the optimizer state and the queue stay the new run's own, and
the queue is then pre-filled (``config.queue_init="prefill"``) by the loaded
key encoder. PATH is either

* another run's workdir: its newest checkpoint's query encoder. The
  backbone must have the same architecture, width, stem and input channels;
  the heads (projector, classifier, ...) are copied where their shapes match
  and stay fresh otherwise (e.g. another number of coarse classes). So a MoCo
  run can be fine-tuned with MaskCon; or
* a torchvision ResNet state dict saved as ``.npz`` or ``.safetensors`` (read
  with numpy: no torch, no safetensors package). For images of at most 64 px
  the small-image stem replaces conv1, as the official code replaces
  torchvision's: conv1 stays fresh and everything else of the backbone is
  loaded. ``fc`` is dropped (the official code sets it to Identity); the
  projector and classifier are fresh. Write such a file from torchvision's
  ImageNet weights with::

    python -c "import numpy, torchvision; numpy.savez('resnet18.npz', **{k: v.numpy() for k, v in torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict().items()})"

Which arrays were loaded and which are fresh is logged (`InitReport.summary`).
Anything that does not fit (architecture, width, stem, channels, missing or
extra keys, shapes) is a one-line `ConfigError` saying what differs.

`read_run` restores a workdir's weights without its dataset (the shapes come
from the checkpoint's metadata); `maskcon_jax.embed` uses it too.

It is over 600 lines (about 900) because both ways of starting from other
weights share the copying rules (which modules are taken, which stay fresh,
the report of what happened): another run's checkpoint, and torchvision
state dicts, whose reading (npz, safetensors without the package) and
renaming onto our modules for both block types and both stems is most of
the module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from maskcon_jax import models
from maskcon_jax.errors import ConfigError, UserError

# A state dict's file types (by suffix, any case).
STATE_DICT_SUFFIXES = (".npz", ".safetensors")
# Keys of a torchvision ResNet that the encoder has no place for: the
# classification layer, dropped as the official code drops it.
_DROPPED = ("fc.weight", "fc.bias")
# A torchvision BatchNorm's keys and where each one goes in Flax.
_BN_KEYS = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
# How many offending keys an error message names.
_SHOW = 3


# ---------------------------------------------------------------------------
# Reading a run's checkpoint.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunWeights:
  """A checkpoint's query encoder, read without the run's dataset.

  Attributes:
    workdir: the run's directory.
    step: the checkpoint's step.
    config: the run's saved config (``trainer.load_config``).
    params: the query encoder's parameters (numpy arrays).
    batch_stats: its BatchNorm statistics (numpy arrays).
  """

  workdir: str
  step: int
  config: ml_collections.ConfigDict
  params: dict[str, Any]
  batch_stats: dict[str, Any]

  @property
  def channels(self) -> int:
    """Input channels of the encoder (those of its first convolution)."""
    return int(self.params["backbone"]["conv1"]["kernel"].shape[2])

  @property
  def num_coarse(self) -> int:
    """Coarse classes of the run's classifier."""
    return int(self.params["classifier"]["kernel"].shape[-1])

  def fingerprint(self) -> str:
    """16 hex digits of SHA-256 over every parameter and statistic.

    Two checkpoints have the same fingerprint exactly when they hold the same
    encoder, wherever their workdirs are.
    """
    digest = hashlib.sha256()
    tree = {"params": self.params, "batch_stats": self.batch_stats}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      leaf = np.ascontiguousarray(leaf)
      digest.update(
          f"{jax.tree_util.keystr(path)} {leaf.dtype} " f"{leaf.shape}".encode()
      )
      digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of ``workdir``'s checkpoints, oldest first.

  Raises:
    UserError: ``workdir`` is not a run's directory or has no checkpoint.
  """
  # trainer imports this module (for init_from); imported here, not at the
  # top, so that neither import needs the other finished. checkpoints too,
  # so that importing this module does not import orbax.
  # pylint: disable-next=g-import-not-at-top
  from maskcon_jax import checkpoints
  from maskcon_jax import trainer  # pylint: disable=g-import-not-at-top

  if not workdir or not os.path.isdir(workdir):
    raise UserError(
        f"--workdir={workdir} does not exist: give a directory "
        "written by maskcon_jax.train."
    )
  trainer.load_config(workdir)  # A one-line error where config.json is gone.
  ckpt_dir = os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR)
  steps = []
  if os.path.isdir(ckpt_dir):
    mngr = checkpoints.manager(workdir, create=False)
    try:
      steps = sorted(mngr.all_steps())
    finally:
      mngr.close()
  if not steps:
    raise UserError(
        f"no checkpoint in {ckpt_dir}: train first with maskcon_jax.train."
    )
  return steps


def read_run(workdir: str, step: int | None = None) -> RunWeights:
  """Restores the query encoder of a checkpoint of ``workdir`` onto the host.

  Unlike ``trainer.load_trained`` this neither loads the run's dataset nor
  builds its model: every array is restored with the shape and dtype its
  checkpoint metadata records.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    step: the checkpoint step; the newest if None.

  Returns:
    The encoder's weights, config and step.

  Raises:
    UserError: no such workdir, checkpoint or step, or one that can't be read.
  """
  # pylint: disable-next=g-import-not-at-top
  from maskcon_jax import checkpoints  # See checkpoint_steps.
  from maskcon_jax import trainer  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  available = checkpoint_steps(workdir)
  config = trainer.load_config(workdir)
  ckpt_dir = os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR)
  if step is None:
    step = available[-1]
  elif step not in available:
    raise UserError(
        f"no checkpoint for step {step} in {workdir}; "
        f"available: {', '.join(map(str, available))}."
    )
  mngr = checkpoints.manager(workdir, create=False)
  try:
    # Orbax and TensorStore raise many exception types for damaged files.
    metadata = mngr.item_metadata(step)
    metadata = getattr(metadata, "tree", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        metadata,
    )
    tree = mngr.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(
        f"checkpoint {step} in {ckpt_dir} cannot be read "
        f"({type(e).__name__}); use another checkpoint or "
        "retrain."
    ) from e
  finally:
    mngr.close()
  if not isinstance(tree, dict) or not {"params", "batch_stats"} <= set(tree):
    raise UserError(
        f"checkpoint {step} in {ckpt_dir} holds no encoder "
        "weights: is it a maskcon_jax run?"
    )
  params, batch_stats = jax.device_get((tree["params"], tree["batch_stats"]))
  return RunWeights(
      workdir=workdir,
      step=int(step),
      config=config,
      params=params,
      batch_stats=batch_stats,
  )


# ---------------------------------------------------------------------------
# Reading a torchvision state dict.
# ---------------------------------------------------------------------------

# safetensors dtype names -> numpy dtypes (little-endian, as the format is).
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _safetensors_dtype(name: str):
  if name == "BF16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (ships with jax)

    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(_SAFETENSORS_DTYPES[name])


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads every tensor of a ``.safetensors`` file with numpy.

  The format: an 8-byte little-endian header length, a JSON header naming
  each tensor's dtype, shape and byte range, then the bytes.

  Raises:
    UserError: the file can't be read or is not a valid safetensors file.
  """

  def bad(why: str) -> UserError:
    return UserError(
        f"{path!r} is not a valid safetensors file ({why}); "
        "write it with safetensors.torch.save_file or use .npz."
    )

  try:
    with open(path, "rb") as f:
      blob = f.read()
  except OSError as e:
    raise UserError(f"cannot read {path!r}: {e.strerror}.") from e
  if len(blob) < 8:
    raise bad("shorter than its 8-byte header length")
  size = int.from_bytes(blob[:8], "little")
  if size > len(blob) - 8:
    raise bad(f"header of {size} bytes in a {len(blob)}-byte file")
  try:
    header = json.loads(blob[8 : 8 + size].decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise bad(f"header is not JSON: {e}") from e
  if not isinstance(header, dict):
    raise bad("header is not a JSON object")
  data = memoryview(blob)[8 + size :]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = _safetensors_dtype(info["dtype"])
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise bad(f"tensor {name!r} has a malformed entry") from e
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= len(data) or end - begin != (
        count * dtype.itemsize
    ):
      raise bad(
          f"tensor {name!r} has bytes {begin}..{end} for shape "
          f"{shape} {info['dtype']}"
      )
    tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(shape)
  return tensors


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torchvision state dict from ``.npz`` or ``.safetensors``, as float32
  arrays (integer entries such as ``num_batches_tracked`` keep their type).

  Raises:
    UserError: a missing or unreadable file, or another suffix.
  """
  if not os.path.isfile(path):
    raise ConfigError(
        f"config.init_from={path!r} does not exist: give a run's "
        "workdir or a torchvision state dict (.npz or "
        ".safetensors)."
    )
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    arrays = read_safetensors(path)
  elif suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
      raise UserError(
          f"cannot read {path!r} as .npz ({e}); write it with "
          "numpy.savez(path, **state_dict_as_numpy)."
      ) from e
  else:
    raise ConfigError(
        f"config.init_from={path!r} is neither a directory nor "
        f"a {' or '.join(STATE_DICT_SUFFIXES)} state dict."
    )
  return {
      k: (
          v.astype(np.float32)
          if np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16"
          else v
      )
      for k, v in arrays.items()
  }


# ---------------------------------------------------------------------------
# torchvision names -> Flax names.
# ---------------------------------------------------------------------------


def _block_layers(bottleneck: bool) -> list[tuple[str, str, str]]:
  """``(torch name, flax name, kind)`` of one residual block's layers."""
  count = 3 if bottleneck else 2
  layers = []
  for i in range(count):
    layers.append((f"conv{i + 1}", f"Conv_{i}", "conv"))
    layers.append((f"bn{i + 1}", f"BatchNorm_{i}", "bn"))
  return layers


def torchvision_layout(arch: str) -> list[tuple[str, tuple[str, ...], str]]:
  """Every layer of a torchvision ResNet ``arch`` and its place here.

  Returns:
    ``(torch prefix, flax path under params/batch_stats, kind)`` for each
    convolution (``kind`` "conv") and BatchNorm ("bn"), stem first.
    ``layerS.B.downsample.0/1`` are ``layerS_B/downsample_conv/norm``.
  """
  stage_sizes, block_cls = models.ARCHITECTURES[arch]
  bottleneck = block_cls is models.Bottleneck
  layout = [
      ("conv1", ("backbone", "conv1"), "conv"),
      ("bn1", ("backbone", "bn1"), "bn"),
  ]
  for stage, blocks in enumerate(stage_sizes, start=1):
    for block in range(blocks):
      torch_block = f"layer{stage}.{block}"
      flax_block = ("backbone", f"layer{stage}_{block}")
      for torch_name, flax_name, kind in _block_layers(bottleneck):
        layout.append(
            (f"{torch_block}.{torch_name}", (*flax_block, flax_name), kind)
        )
      # The first block of every stage but a BasicBlock's first changes the
      # shape (stride or channels), so it has a projection shortcut.
      if block == 0 and (stage > 1 or bottleneck):
        layout.append(
            (
                f"{torch_block}.downsample.0",
                (*flax_block, "downsample_conv"),
                "conv",
            )
        )
        layout.append(
            (
                f"{torch_block}.downsample.1",
                (*flax_block, "downsample_norm"),
                "bn",
            )
        )
  return layout


def _torch_keys(prefix: str, kind: str) -> list[str]:
  if kind == "conv":
    return [f"{prefix}.weight"]
  return [f"{prefix}.{k}" for k in _BN_KEYS]


def describe_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """What a torchvision ResNet state dict holds: blocks, width, stem.

  Returns:
    ``stage_sizes`` (blocks per stage), ``bottleneck``, ``arch`` (the name in
    ``models.ARCHITECTURES``, or None), ``width`` (layer1's channels),
    ``stem`` (conv1's kernel size) and ``channels`` (conv1's input channels).

  Raises:
    ConfigError: the keys are not a torchvision ResNet's.
  """
  if "conv1.weight" not in state_dict:
    prefixes = {
        k[: -len("conv1.weight")]
        for k in state_dict
        if k.endswith(".conv1.weight") and "layer" not in k
    }
    hint = (
        f"its keys start with {sorted(prefixes)[0]!r}; save the torchvision "
        "ResNet's own state_dict()"
        if prefixes
        else "it has no 'conv1.weight'; save a torchvision ResNet's "
        "state_dict()"
    )
    raise ConfigError(
        f"config.init_from is not a torchvision ResNet state " f"dict: {hint}."
    )
  blocks: dict[int, set[int]] = {}
  for key in state_dict:
    match = re.match(r"layer(\d+)\.(\d+)\.", key)
    if match:
      blocks.setdefault(int(match[1]), set()).add(int(match[2]))
  stage_sizes = [max(blocks.get(s, {-1})) + 1 for s in range(1, 5)]
  bottleneck = any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in state_dict)
  block_cls = models.Bottleneck if bottleneck else models.BasicBlock
  arch = next(
      (
          name
          for name, (sizes, cls) in models.ARCHITECTURES.items()
          if list(sizes) == stage_sizes and cls is block_cls
      ),
      None,
  )
  conv1 = state_dict["conv1.weight"]
  width_key = "layer1.0.conv1.weight"
  width = (
      int(state_dict[width_key].shape[0])
      if (width_key in state_dict)
      else int(conv1.shape[0])
  )
  return dict(
      stage_sizes=stage_sizes,
      bottleneck=bottleneck,
      arch=arch,
      width=width,
      stem=tuple(int(d) for d in conv1.shape[2:]),
      channels=int(conv1.shape[1]),
  )


def _arch_text(info: dict[str, Any]) -> str:
  blocks = ",".join(map(str, info["stage_sizes"]))
  kind = "Bottleneck" if info["bottleneck"] else "BasicBlock"
  name = info["arch"] or "a ResNet this library does not build"
  return f"{name} ({kind} x {blocks})"


def convert_torchvision(
    state_dict: dict[str, np.ndarray],
    *,
    arch: str,
    width: int,
    small_images: bool,
    channels: int,
) -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
  """A torchvision ResNet state dict as this library's backbone variables.

  Convolutions go from PyTorch's ``(out, in, kh, kw)`` to Flax's
  ``(kh, kw, in, out)``; BatchNorm ``weight``/``bias`` become ``scale``/
  ``bias`` and the running statistics ``mean``/``var`` (both eps 1e-5).

  Args:
    state_dict: torchvision names -> arrays (`read_state_dict`).
    arch: ``config.arch``.
    width: ``config.width`` (64 = torchvision's ResNets).
    small_images: the run uses the small-image stem (images <= 64 px): conv1
      is not loaded, as the official code replaces it.
    channels: the run's image channels (conv1's input channels).

  Returns:
    ``(params, batch_stats, loaded, fresh)``: nested dicts under
    ``"backbone"`` with every loaded array, and the Flax paths (``a/b``) of
    the layers loaded and of those left fresh.

  Raises:
    ConfigError: another architecture, width, stem or channel count, missing
      or extra keys, or an array of another shape.
  """
  info = describe_state_dict(state_dict)
  expected_arch = describe_layout(arch)
  if (info["stage_sizes"], info["bottleneck"]) != (
      expected_arch["stage_sizes"],
      expected_arch["bottleneck"],
  ):
    raise ConfigError(
        f"config.init_from holds a torchvision {_arch_text(info)}, but "
        f"config.arch={arch!r} is a {_arch_text(expected_arch)}: "
        + (
            f"set config.arch={info['arch']!r}"
            if info["arch"]
            else "use a resnet10/18/34/50 state dict"
        )
        + "."
    )
  if info["width"] != width:
    raise ConfigError(
        f"config.init_from has width {info['width']} (layer1's channels; 64 is "
        f"torchvision's standard), but config.width={width}: set "
        f"config.width={info['width']}."
    )
  if not small_images and info["stem"] != (7, 7):
    raise ConfigError(
        f"config.init_from has a {info['stem'][0]}x{info['stem'][1]} conv1 "
        "(a small-image stem), but images above "
        f"{models.SMALL_IMAGE_MAX_SIZE} px use torchvision's 7x7 stride-2 stem: "
        f"use a state dict of a standard torchvision ResNet, or config."
        f"image_size <= {models.SMALL_IMAGE_MAX_SIZE} (conv1 then stays fresh)."
    )
  if not small_images and info["channels"] != channels:
    raise ConfigError(
        f"config.init_from's conv1 takes {info['channels']}-channel images, "
        f"but this run's have {channels}: set config.image_channels="
        f"{info['channels']}."
    )

  layout = torchvision_layout(arch)
  expected = {
      key for prefix, _, kind in layout for key in _torch_keys(prefix, kind)
  }
  tracked = {
      f"{prefix}.num_batches_tracked"
      for prefix, _, kind in layout
      if kind == "bn"
  }
  missing = sorted(expected - set(state_dict))
  extra = sorted(set(state_dict) - expected - tracked - set(_DROPPED))
  if missing:
    raise ConfigError(
        f"config.init_from lacks {len(missing)} key(s) of a torchvision "
        f"{arch}: {', '.join(map(repr, missing[:_SHOW]))}"
        f"{', ...' if len(missing) > _SHOW else ''}; save the whole "
        "state_dict() of the model."
    )
  if extra:
    raise ConfigError(
        f"config.init_from has {len(extra)} key(s) a torchvision {arch} does "
        f"not: {', '.join(map(repr, extra[:_SHOW]))}"
        f"{', ...' if len(extra) > _SHOW else ''}; save the torchvision "
        "ResNet's own state_dict(), without wrappers or heads."
    )

  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}
  loaded, fresh = [], []

  def put(tree, path, value):
    for name in path[:-1]:
      tree = tree.setdefault(name, {})
    tree[path[-1]] = value

  for prefix, path, kind in layout:
    if small_images and prefix == "conv1":
      fresh.append("/".join(path))
      continue
    if kind == "conv":
      put(
          params,
          (*path, "kernel"),
          np.transpose(state_dict[f"{prefix}.weight"], (2, 3, 1, 0)),
      )
    else:
      for torch_key, (collection, name) in _BN_KEYS.items():
        put(
            params if collection == "params" else stats,
            (*path, name),
            state_dict[f"{prefix}.{torch_key}"],
        )
    loaded.append("/".join(path))
  return params, stats, loaded, fresh


def describe_layout(arch: str) -> dict[str, Any]:
  """`describe_state_dict`'s ``stage_sizes``/``bottleneck``/``arch`` of
  ``arch``."""
  stage_sizes, block_cls = models.ARCHITECTURES[arch]
  return dict(
      stage_sizes=list(stage_sizes),
      bottleneck=block_cls is models.Bottleneck,
      arch=arch,
  )


# ---------------------------------------------------------------------------
# Merging loaded weights into a fresh state.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class InitReport:
  """What `init_variables` loaded: the source and the arrays' Flax paths."""

  source: str
  kind: str  # "torchvision", or "run, step N"
  loaded: list[str]
  fresh: list[str]
  dropped: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """One line: the source, the loaded layers and the fresh ones."""

    def group(paths):
      # Backbone layers by block ("backbone/layer2_0"), heads by module.
      names = []
      for path in paths:
        parts = path.split("/")
        name = "/".join(parts[:2]) if parts[0] == "backbone" else parts[0]
        if name not in names:
          names.append(name)
      return ", ".join(names) if names else "nothing"

    line = (
        f"init_from={self.source} ({self.kind}): loaded {group(self.loaded)}"
        f"; fresh: {group(self.fresh)}"
    )
    if self.dropped:
      line += f"; dropped: {', '.join(self.dropped)}"
    return line


def _flat(tree) -> dict[str, Any]:
  return {
      "/".join(str(getattr(k, "key", k)) for k in path): leaf
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _module_of(path: str) -> str:
  """The layer a leaf path belongs to (``backbone/layer1_0/Conv_0``)."""
  return path.rsplit("/", 1)[0]


def _from_run(path: str, config, params, batch_stats):
  """Loaded variables from another run's workdir (see the module doc)."""
  try:
    source = read_run(path)
  except UserError as e:
    raise ConfigError(
        f"config.init_from={path!r} is a directory but not a "
        f"run to start from: {e}"
    ) from e
  own_arch = (config.arch, config.width, config.image_size)
  src = source.config
  src_arch = (src.get("arch"), src.get("width"), src.get("image_size"))
  target = {
      **{f"params/{k}": v for k, v in _flat(params).items()},
      **{f"batch_stats/{k}": v for k, v in _flat(batch_stats).items()},
  }
  loaded_from = {
      **{f"params/{k}": v for k, v in _flat(source.params).items()},
      **{f"batch_stats/{k}": v for k, v in _flat(source.batch_stats).items()},
  }

  def describe(arch, width, size):
    small = size is not None and size <= models.SMALL_IMAGE_MAX_SIZE
    return (
        f"{arch} width {width} with the {'3x3' if small else '7x7'} stem "
        f"({size} px)"
    )

  backbone = sorted(k for k in target if k.split("/")[1] == "backbone")
  for key in backbone:
    have = loaded_from.get(key)
    want = target[key]
    if have is None or tuple(have.shape) != tuple(want.shape):
      if src_arch != own_arch:
        raise ConfigError(
            f"config.init_from={path!r} is a {describe(*src_arch)} run, this "
            f"config is {describe(*own_arch)}: init from a run of the same "
            "architecture, width and stem."
        )
      if key.endswith("backbone/conv1/kernel") and have is not None:
        raise ConfigError(
            f"config.init_from={path!r} was trained on {have.shape[2]}-channel "
            f"images, this run's have {want.shape[2]}: set config."
            f"image_channels={have.shape[2]}."
        )
      what = (
          f"lacks {key}"
          if have is None
          else f"has {key} of shape {tuple(have.shape)}"
      )
      raise ConfigError(
          f"config.init_from={path!r} {what}, this config "
          f"needs {tuple(want.shape)}: init from a run of the "
          "same model."
      )
  extra = sorted(
      k
      for k in loaded_from
      if k.split("/")[1] == "backbone" and k not in target
  )
  if extra:
    raise ConfigError(
        f"config.init_from={path!r} has backbone arrays this "
        f"config does not ({', '.join(extra[:_SHOW])}): init "
        "from a run of the same architecture."
    )
  if (src.get("conv_padding") or models.LEGACY_CONV_PADDING) != (
      models.conv_padding_of(config)
  ):
    logging.warning(
        "config.init_from=%s was trained with conv_padding=%r, "
        "this run uses %r: the loaded weights compute another "
        "function at first.",
        path,
        src.get("conv_padding"),
        models.conv_padding_of(config),
    )
  new, fresh_leaves = {}, []
  for key, want in target.items():
    have = loaded_from.get(key)
    if have is not None and tuple(have.shape) == tuple(want.shape):
      new[key] = have
    else:
      fresh_leaves.append(key)
  # A head is loaded only whole: half a projector would not be the source's.
  fresh_modules = {
      _module_of(k.split("/", 1)[1]).split("/")[0] for k in fresh_leaves
  }
  for key in list(new):
    if key.split("/")[1] in fresh_modules:
      del new[key]
  loaded = sorted({_module_of(k.split("/", 1)[1]) for k in new})
  fresh = sorted(
      {_module_of(k.split("/", 1)[1]) for k in target if k not in new}
  )
  loaded_params = _nest(
      {k.split("/", 1)[1]: v for k, v in new.items() if k.startswith("params/")}
  )
  loaded_stats = _nest(
      {
          k.split("/", 1)[1]: v
          for k, v in new.items()
          if k.startswith("batch_stats/")
      }
  )
  report = InitReport(
      source=path, kind=f"run, step {source.step}", loaded=loaded, fresh=fresh
  )
  return loaded_params, loaded_stats, report


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    parts = key.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def _from_torchvision(path: str, config, params, batch_stats):
  state_dict = read_state_dict(path)
  channels = int(params["backbone"]["conv1"]["kernel"].shape[2])
  small = config.image_size <= models.SMALL_IMAGE_MAX_SIZE
  loaded_params, loaded_stats, loaded, fresh = convert_torchvision(
      state_dict,
      arch=config.arch,
      width=config.width,
      small_images=small,
      channels=channels,
  )
  loaded_layers = set(loaded)
  fresh += sorted(
      {
          _module_of(k)
          for k in _flat(params)
          if _module_of(k) not in loaded_layers and _module_of(k) not in fresh
      }
  )
  if small:
    fresh[fresh.index("backbone/conv1")] = (
        f"backbone/conv1 (the {config.image_size}-px stem)"
    )
  dropped = [k.split(".")[0] for k in _DROPPED if k in state_dict][:1]
  report = InitReport(
      source=path,
      kind="torchvision",
      loaded=loaded,
      fresh=fresh,
      dropped=dropped,
  )
  return loaded_params, loaded_stats, report


def init_variables(
    path: str, config, params, batch_stats
) -> tuple[Any, Any, InitReport]:
  """``params`` and ``batch_stats`` with the arrays ``path`` provides.

  Args:
    path: ``config.init_from``: a run's workdir, or a torchvision state dict
      (``.npz`` or ``.safetensors``).
    config: the new run's config.
    params, batch_stats: the new run's freshly initialised query encoder.

  Returns:
    ``(params, batch_stats, report)``: the same trees (shapes and dtypes
    unchanged) with every loaded array replaced, and what was loaded.

  Raises:
    UserError: a path that can't be used, or weights that don't fit (one line
      saying what differs).
  """
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    loaded_params, loaded_stats, report = _from_run(
        path, config, params, batch_stats
    )
  else:
    loaded_params, loaded_stats, report = _from_torchvision(
        path, config, params, batch_stats
    )

  def merge(fresh_tree, loaded_tree):
    loaded_flat = _flat(loaded_tree)
    flat, treedef = jax.tree_util.tree_flatten_with_path(fresh_tree)
    leaves = []
    for key_path, leaf in flat:
      name = "/".join(str(getattr(k, "key", k)) for k in key_path)
      value = loaded_flat.get(name)
      if value is None:
        leaves.append(leaf)
        continue
      if tuple(value.shape) != tuple(leaf.shape):
        raise ConfigError(
            f"config.init_from={path!r} has {name} of shape "
            f"{tuple(value.shape)}, this config needs "
            f"{tuple(leaf.shape)}."
        )
      leaves.append(np.asarray(value).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)

  return (
      merge(params, loaded_params),
      merge(batch_stats, loaded_stats),
      report,
  )


def init_state(state, config):
  """``state`` with both encoders started from ``config.init_from``.

  The query encoder's parameters and BatchNorm statistics take the loaded
  arrays; the key encoder becomes an exact copy of it, as at any start. The
  optimizer state, the queue and the RNG stay ``state``'s own. Each array
  keeps its sharding. Logs `InitReport.summary`.

  Raises:
    UserError: see `init_variables`.
  """
  params, batch_stats, report = init_variables(
      config.init_from,
      config,
      jax.device_get(state.params),
      jax.device_get(state.batch_stats),
  )

  def place(new, old):
    # A buffer of its own for every leaf: the steps donate the state, and a
    # buffer shared by both encoders (or with numpy) would be freed twice.
    return jax.device_put(
        np.asarray(new, old.dtype), old.sharding, may_alias=False
    )

  logging.info("%s", report.summary())
  state = state.replace(
      params=jax.tree.map(place, params, state.params),
      batch_stats=jax.tree.map(place, batch_stats, state.batch_stats),
  )
  if state.target_params is None:  # A method without a key encoder.
    return state
  return state.replace(
      target_params=jax.tree.map(place, params, state.target_params),
      target_batch_stats=jax.tree.map(
          place, batch_stats, state.target_batch_stats
      ),
  )
