"""What a training method declares, and the checks of its config block.

A method is a `Method` object. What it declares:

* ``view_policies`` (and ``rng_names``): the augmentation policy of each
  view, and the step's other named keys;
* ``uses_queue``: whether it keeps an EMA key encoder whose keys of the
  first view fill a queue (pre-filled before the first step); methods
  without one carry neither in their state;
* ``config_block`` / ``validate``: the fields of ``config.<name>``, with
  their defaults, and their check;
* ``encoder``: the model it trains;
* ``extras``: values computed without gradient before the loss (saliency's
  masked views and hard negatives);
* ``loss`` and ``metrics``: the loss over the step context
  (`maskcon_jax.train_step.StepContext`) and what it logs;
* ``forwards_per_image``: encoder passes per training image, for FLOPs.

The generic step (`maskcon_jax.train_step.train_step`) calls the view, extra,
loss and metric hooks while it is traced; the config checks, the model
builder and the benchmarks call the others (`maskcon_jax.methods`). A method
that needs another optimizer or other state may still get a step of its
own; these hooks cover what the seven methods here differ in.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from maskcon_jax import models
from maskcon_jax.errors import ConfigError

# The value checks, here too for method modules (`base.is_int`).
from maskcon_jax.errors import is_int  # noqa: F401  pylint: disable=unused-import
from maskcon_jax.errors import is_number
from maskcon_jax.errors import show

Array = jax.Array


class Method:
  """A contrastive method over the shared encoder, views, optimizer and step.

  Subclasses set the class attributes and override the hooks they need; the
  defaults describe an in-batch method with one plain encoder, no block and
  no extras.

  Attributes:
    name: the ``config.mode`` that selects it; also the name of its config
      block (``config.<name>``), if it has one.
    uses_queue: keep an EMA key encoder and a queue of its keys of the first
      view (with their coarse labels). Without it the state has neither and
      the trainer pre-fills nothing.
    salt: folded into the run's key before the step, so that methods draw
      independent randomness (0 queue methods, 1 the pre-fill, 2 WCL, 3
      SelfCon, 4 saliency).
    legacy_fields: flat config names used before the blocks existed (config
      files and config.json of older runs), ``{old: field of the block}``.
  """

  name: str = ""
  uses_queue: bool = False
  salt: int = 0
  legacy_fields: dict[str, str] = {}

  def config_block(self) -> ml_collections.ConfigDict | None:
    """A fresh ``config.<name>`` with the defaults; None: no block.

    Fields whose default is None must be ``config_dict.placeholder(type)``,
    so that the command line can set them.
    """
    return None

  def rng_names(self, options) -> tuple[str, ...]:
    """The names of the step's keys beyond one per view
    (``StepContext.rngs``), in the order they are split; with a key encoder
    one is ``key``, which permutes the batch for shuffle-BN."""
    del options
    return ("key",) if self.uses_queue else ()

  def validate(self, options, config) -> None:
    """Raises ``ConfigError`` (one line) for a bad field of the block."""
    del options, config

  def view_policies(self, settings) -> tuple[str, ...]:
    """The ``augment.VIEW_POLICIES`` entry of each view; the key encoder, if
    any, embeds the first."""
    return (settings.strong_policy,)

  def encoder(self, options, config, num_coarse: int) -> nn.Module:
    """The model this method trains (the plain `models.Encoder` here)."""
    del options
    return models.Encoder(**models.encoder_fields(config, num_coarse))

  def forwards_per_image(self, options) -> int:
    """Encoder passes per training image, a backward pass counting two
    (here: the key's forward, if any, and one view's forward and
    backward)."""
    del options
    return 4 if self.uses_queue else 3

  def extras(self, ctx):
    """``ctx`` with values the loss needs that carry no gradient."""
    return ctx

  def loss(self, ctx, params) -> tuple[Array, tuple[Any, Any]]:
    """``(loss, (new batch_stats, aux))`` of the query encoder's ``params``."""
    raise NotImplementedError

  def metrics(self, ctx, aux) -> dict[str, Array]:
    """Scalars to log besides the loss, from the loss's ``aux``."""
    del ctx
    return dict(aux)

  # Generic; methods need not override what follows.

  def options(self, config) -> ml_collections.FrozenConfigDict:
    """``config.<name>``, a field left out or None taking its default.

    Raises:
      ConfigError: the block has a field the method does not know.
    """
    defaults = self.config_block()
    if defaults is None:
      return ml_collections.FrozenConfigDict({})
    block = config.get(self.name, None)
    if block is None:
      block = {}
    elif not hasattr(block, "keys"):
      raise ConfigError(
          f"config.{self.name}={show(block)} must be a block of "
          f"fields: {', '.join(sorted(defaults.keys()))}."
      )
    unknown = sorted(set(block.keys()) - set(defaults.keys()))
    if unknown:
      raise ConfigError(
          f"config.{self.name}.{unknown[0]} is not a field of the "
          f"{self.name} block; its fields are: "
          f"{', '.join(sorted(defaults.keys()))}."
      )
    resolved = defaults.to_dict()
    for field, value in block.items():
      if value is not None:
        resolved[field] = (
            value.to_dict()
            if isinstance(value, ml_collections.ConfigDict)
            else value
        )
    return ml_collections.FrozenConfigDict(resolved)

  def fail(self, field: str, value: Any, must: str):
    """Raises the one-line ``ConfigError`` of a bad block field."""
    raise ConfigError(f"config.{self.name}.{field}={show(value)} {must}.")

  def check_bool(self, options, field: str) -> None:
    if not isinstance(options[field], bool):
      self.fail(field, options[field], "must be True or False")

  def check_number(
      self, options, field: str, low: float = 0.0, strict: bool = False
  ) -> None:
    value = options[field]
    if not is_number(value) or value < low or (strict and value == low):
      self.fail(
          field, value, f"must be a number {'>' if strict else '>='} " f"{low}"
      )

  def check_choice(self, options, field: str, choices) -> None:
    value = options[field]
    if not isinstance(value, str) or value not in choices:
      self.fail(
          field,
          value,
          f"is not supported; use one of: " f"{', '.join(choices)}",
      )

  def __repr__(self) -> str:
    return f"<method {self.name}>"
