r"""Exports a trained run: a split's embeddings, or a self-contained encoder.

  python -m maskcon_jax.export --workdir runs/default --split test \
      --out runs/default/emb_test.npz
  python -m maskcon_jax.export --workdir runs/default --format stablehlo \
      --out encoder/

``--format npz`` (the default) embeds one split. The file holds ``features``
(backbone, what retrieval is scored on), ``projections`` (the contrastive
head's output, not normalised), ``fine_labels`` (absent for data labelled
with coarse classes only), ``coarse_labels``, ``image_ids`` (row indices into
the split, for in-memory and streamed data alike), ``fine_names``,
``coarse_names``, ``fine_to_coarse`` and ``step``. Names are unicode arrays,
so ``np.load`` needs no ``allow_pickle``.

``--format stablehlo`` serialises, with ``jax.export``, the function from
uint8 images ``(N, S, S, C)`` (S = ``config.image_size``, C the run's
channels, N symbolic) to the L2-normalised backbone features ``(N, D)``:
the dataset's normalisation, the query encoder in eval mode and its weights
are all inside, lowered for CPU and CUDA. ``OUT/encoder.jaxexport`` is the
function, ``OUT/encoder.json`` describes it. Running it needs only jax::

  import jax, numpy as np
  with open("encoder/encoder.jaxexport", "rb") as f:
    encoder = jax.export.deserialize(bytearray(f.read()))
  features = encoder.call(images_uint8_NxSxSxC)  # (N, D), unit rows

Images must already have the run's size and channels (``maskcon_jax.embed``
reads files that way); the output equals `embed.RunEncoder.embed`'s
features, L2-normalised, up to float32 rounding.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

import maskcon_jax  # noqa: E402
from maskcon_jax import evaluate  # noqa: E402
from maskcon_jax.errors import UserError  # noqa: E402

FORMATS = ("npz", "stablehlo")
# Where the exported encoder runs: XLA lowers it once per platform.
EXPORT_PLATFORMS = ("cpu", "cuda")
ENCODER_FILE = "encoder.jaxexport"
ENCODER_INFO_FILE = "encoder.json"


def run_export(
    workdir: str, split: str, out: str, checkpoint: int | None = None
) -> dict[str, np.ndarray]:
  """Embeds ``split`` with a checkpoint of ``workdir`` and writes ``out``.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    split: "test" or "train".
    out: the ``.npz`` path, written as given (no suffix is added); its
      directory is created if needed.
    checkpoint: the checkpoint step; the latest if None.

  Returns:
    The arrays written.

  Raises:
    UserError: ``workdir`` has no run or no such checkpoint, or a bad split.
  """
  run = evaluate.load_and_embed(workdir, split, checkpoint, with_bank=False)
  hierarchy = run["experiment"].dataset.hierarchy
  arrays = {
      "features": run["embeddings"]["features"].astype(np.float32),
      "projections": run["embeddings"]["projection"].astype(np.float32),
      "coarse_labels": np.asarray(run["coarse"], np.int32),
      "image_ids": np.arange(len(run["coarse"]), dtype=np.int32),
      "fine_names": np.asarray(hierarchy.fine_names, dtype=str),
      "coarse_names": np.asarray(hierarchy.coarse_names, dtype=str),
      "fine_to_coarse": np.asarray(hierarchy.fine_to_coarse, np.int32),
      "step": np.asarray(run["step"], np.int64),
  }
  if run["fine"] is not None:
    arrays["fine_labels"] = np.asarray(run["fine"], np.int32)
  directory = os.path.dirname(os.path.abspath(out))
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {directory} for --out: {e.strerror}.")
  tmp = out + ".tmp"
  # A file object keeps numpy from appending ".npz" to the name.
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, out)
  return arrays


def encoder_function(encoder):
  """``uint8 (N, S, S, C) -> float32 (N, D)`` unit-norm features of a
  `embed.RunEncoder`, its weights closed over (constants when exported)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  # Host copies: the exported constants carry no device placement.
  variables = jax.device_get(encoder.variables)

  def features(images_NxSxSxC):
    out = encoder.apply(variables, images_NxSxSxC)["features"]
    out = out.astype(jnp.float32)
    # As evaluation.l2_normalize_np: zero rows stay zero.
    norm = jnp.linalg.norm(out, axis=-1, keepdims=True)
    return out / jnp.maximum(norm, 1e-12)

  return features


def run_export_stablehlo(
    workdir: str,
    out: str,
    checkpoint: int | None = None,
    platforms: tuple[str, ...] = EXPORT_PLATFORMS,
) -> dict:
  """Serialises ``workdir``'s encoder with ``jax.export`` into folder ``out``.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    out: the folder for `ENCODER_FILE` and `ENCODER_INFO_FILE`.
    checkpoint: the checkpoint step; the latest if None.
    platforms: what to lower for.

  Returns:
    The description written to `ENCODER_INFO_FILE`.

  Raises:
    UserError: ``workdir`` has no run or no such checkpoint, or ``out`` can't
      be written.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from maskcon_jax import embed  # pylint: disable=g-import-not-at-top
  from maskcon_jax import workdir_io  # pylint: disable=g-import-not-at-top

  encoder = embed.load_run_encoder(workdir, checkpoint)
  size, channels = encoder.image_size, encoder.channels
  (batch,) = jax.export.symbolic_shape("batch")
  exported = jax.export.export(
      jax.jit(encoder_function(encoder)), platforms=platforms
  )(jax.ShapeDtypeStruct((batch, size, size, channels), jnp.uint8))
  dim = int(exported.out_avals[0].shape[-1])
  info = {
      "input": {
          "shape": ["batch", size, size, channels],
          "dtype": "uint8",
          "what": "images already resized to image_size, RGB or gray "
          "as channels says, pixel values 0-255",
      },
      "output": {
          "shape": ["batch", dim],
          "dtype": "float32",
          "what": "L2-normalised backbone features (cosine "
          "similarity = dot product)",
      },
      "image_size": size,
      "channels": channels,
      "mean": list(encoder.mean),
      "std": list(encoder.std),
      "step": encoder.step,
      "workdir": encoder.workdir,
      "fingerprint": encoder.fingerprint,
      "arch": encoder.config.arch,
      "width": encoder.config.width,
      "mode": encoder.config.get("mode", "maskcon"),
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "calling_convention_version": exported.calling_convention_version,
      "load": "jax.export.deserialize(bytearray(open(path, 'rb').read()))"
      ".call(images)",
  }
  try:
    os.makedirs(out, exist_ok=True)
    blob = exported.serialize()
    tmp = os.path.join(out, ENCODER_FILE + ".tmp")
    with open(tmp, "wb") as f:
      f.write(blob)
    os.replace(tmp, os.path.join(out, ENCODER_FILE))
    workdir_io.write_json_atomic(os.path.join(out, ENCODER_INFO_FILE), info)
  except OSError as e:
    raise UserError(
        f"cannot write the encoder to --out={out}: {e.strerror}; "
        "choose a writable folder."
    ) from e
  return info


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string(
      "workdir", None, "A directory written by maskcon_jax.train."
  )
  flags.DEFINE_enum(
      "format",
      "npz",
      list(FORMATS),
      "npz: one split's embeddings; stablehlo: the encoder "
      "itself (jax.export), into the folder --out.",
  )
  flags.DEFINE_enum(
      "split",
      "test",
      list(evaluate.SPLITS),
      "The split to export (--format=npz).",
  )
  flags.DEFINE_string(
      "out",
      None,
      "The .npz file to write (--format=npz), "
      "or the folder for the encoder (--format=stablehlo).",
  )
  flags.DEFINE_integer(
      "checkpoint", None, "The checkpoint step to export; the latest if unset."
  )
  flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # The line below is the output.
  flag = flags.FLAGS
  try:
    if flag.format == "stablehlo":
      if flags.FLAGS["split"].present:
        raise UserError(
            "--split applies to --format=npz only: the encoder "
            "embeds any images; drop --split."
        )
      info = run_export_stablehlo(flag.workdir, flag.out, flag.checkpoint)
    else:
      arrays = run_export(flag.workdir, flag.split, flag.out, flag.checkpoint)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  if flag.format == "stablehlo":
    print(
        f"wrote {os.path.join(flag.out, ENCODER_FILE)}: uint8 (N, "
        f"{info['image_size']}, {info['image_size']}, {info['channels']}) "
        f"-> unit-norm features (N, {info['output']['shape'][1]}) for "
        f"{', '.join(info['platforms'])} (step {info['step']}), described "
        f"in {ENCODER_INFO_FILE}",
        flush=True,
    )
    return
  print(
      f"wrote {flag.out}: {len(arrays['image_ids'])} {flag.split} items, "
      f"features {arrays['features'].shape[1]}-d, projections "
      f"{arrays['projections'].shape[1]}-d (step {int(arrays['step'])})",
      flush=True,
  )


if __name__ == "__main__":
  maskcon_jax.prefer_eigen_cpu_convolutions()  # Before JAX starts.
  define_flags()
  app.run(main)
