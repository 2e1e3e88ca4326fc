"""The queue methods: MaskCon, Grafit, CoIns and MoCo.

One query (strong view) against its key (the EMA key encoder's weak view)
and a queue of past keys with their coarse labels; the methods differ only
in the target over ``[key, queue]`` (see `maskcon_jax.losses` and the
README's table). Their hyperparameters are the top-level ``t0``, ``t`` and
``w``, so they have no config block.
"""

from __future__ import annotations

import jax.numpy as jnp

from maskcon_jax import losses
from maskcon_jax.methods import base

MODES = ("maskcon", "grafit", "coins", "moco")


def mode_loss(
    mode: str,
    q_BxD,
    k_BxD,
    coarse_logits_BxC,
    queue_KxD,
    queue_labels_K,
    labels_B,
    *,
    t0: float,
    t: float,
    w: float,
):
  """The loss of ``mode`` (one of `MODES`) on one batch."""
  if mode == "maskcon":
    return losses.maskcon_loss(
        q_BxD, k_BxD, queue_KxD, queue_labels_K, labels_B, t0=t0, t=t, w=w
    )
  if mode == "grafit":
    return losses.grafit_loss(
        q_BxD, k_BxD, queue_KxD, queue_labels_K, labels_B, t0=t0, w=w
    )
  if mode == "coins":
    return losses.coins_loss(
        q_BxD, k_BxD, coarse_logits_BxC, queue_KxD, labels_B, t0=t0, w=w
    )
  if mode == "moco":
    return losses.moco_loss(q_BxD, k_BxD, queue_KxD, t0=t0)
  raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")


class QueueMethod(base.Method):
  """MoCo's two views, key encoder and queue, with ``mode``'s target."""

  uses_queue = True
  salt = 0

  def __init__(self, name: str):
    if name not in MODES:
      raise ValueError(f"Unknown mode {name!r}; expected one of {MODES}.")
    self.name = name

  def view_policies(self, settings):
    return (settings.weak_policy, settings.strong_policy)

  def loss(self, ctx, params):
    s = ctx.settings
    out, batch_stats = ctx.query_forward(
        params, ctx.state.batch_stats, ctx.views[1]
    )
    q_BxD = losses.l2_normalize(out["projection"])
    loss = mode_loss(
        self.name,
        q_BxD,
        ctx.k_BxD,
        out["coarse_logits"],
        ctx.state.queue_KxD,
        ctx.state.queue_labels_K,
        ctx.labels_B,
        t0=s.t0,
        t=s.t,
        w=s.w,
    )
    return loss, (batch_stats, q_BxD)

  def metrics(self, ctx, aux):
    q_BxD = aux
    return {
        "positive_similarity": jnp.mean(jnp.sum(q_BxD * ctx.k_BxD, axis=-1))
    }


METHODS = tuple(QueueMethod(name) for name in MODES)
