"""SelfCon: self-contrastive learning with a multi-exit network (Bae et al.,
AAAI 2023).

One view per image (``strong_policy``); its backbone and exit embeddings are
the "views" of a SupCon loss whose positives share a coarse label (with
``label_free``: only the same image's other exits), scaled by
``t0 / base_temperature``. In-batch: no key encoder, no queue.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from maskcon_jax import losses
from maskcon_jax import models
from maskcon_jax.methods import base

SIZES = models.SELFCON_SIZES


class SelfCon(base.Method):
  """SelfCon over `models.SelfConEncoder`."""

  name = "selfcon"
  salt = 3
  legacy_fields = {
      "selfcon_position": "position",
      "selfcon_size": "size",
      "selfcon_label_free": "label_free",
      "selfcon_base_temperature": "base_temperature",
      "eval_exit_ensemble": "eval_exit_ensemble",
  }

  def config_block(self):
    return ml_collections.ConfigDict(
        {
            # The exit follows this stage (1-3; the paper: 2).
            "position": 2,
            # The exit's sub-network: fc | small | same (see SelfConEncoder).
            "size": "fc",
            # Identity positives instead of coarse labels (unsupervised).
            "label_free": False,
            # tau_b: the loss is scaled by t0 / base_temperature.
            "base_temperature": 0.07,
            # Retrieval on the backbone and exit features together. Changes no
            # parameter, so a finished run can be re-evaluated with it.
            "eval_exit_ensemble": False,
        }
    )

  def validate(self, options, config):
    del config
    position = options.position
    if not base.is_int(position) or position not in (1, 2, 3):
      self.fail(
          "position",
          position,
          "must be 1, 2 or 3 (the stage the exit follows; the paper uses 2)",
      )
    self.check_choice(options, "size", SIZES)
    self.check_bool(options, "label_free")
    self.check_bool(options, "eval_exit_ensemble")
    self.check_number(options, "base_temperature", strict=True)

  def encoder(self, options, config, num_coarse):
    stage_sizes, block_cls = models.ARCHITECTURES[config.arch]
    fields = models.encoder_fields(config, num_coarse)
    return models.SelfConEncoder(
        backbone=fields["backbone"],
        stage_sizes=tuple(stage_sizes),
        block_cls=block_cls,
        width=config.width,
        exit_stages=(options.position,),
        exit_size=options.size,
        embed_dim=config.embed_dim,
        num_coarse=num_coarse,
        ensemble_features=options.eval_exit_ensemble,
        dtype=fields["dtype"],
        conv_padding=models.conv_padding_of(config),
    )

  def loss(self, ctx, params):
    labels_B = ctx.labels_B
    b = labels_B.shape[0]
    ids_B = (
        jnp.arange(b, dtype=jnp.int32) if ctx.options.label_free else labels_B
    )
    out, stats = ctx.query_forward(params, ctx.state.batch_stats, ctx.views[0])
    # Rows ordered view-major, [backbone; exit 1; ...], as SupCon's code.
    z_VxBxD = jnp.concatenate(
        [out["projection"][None], jnp.moveaxis(out["exit_projections"], 1, 0)],
        axis=0,
    )
    z_VxBxD = losses.l2_normalize(z_VxBxD)
    num_views = z_VxBxD.shape[0]
    z_MxD = z_VxBxD.reshape(num_views * b, -1)
    positives = losses.label_positives(jnp.tile(ids_B, num_views))
    loss = losses.supcon_loss(
        z_MxD,
        positives,
        temperature=ctx.settings.t0,
        base_temperature=ctx.options.base_temperature,
    )
    metrics = {
        "exit_similarity": jnp.mean(
            jnp.sum(z_VxBxD[0][None] * z_VxBxD[1:], axis=-1)
        )
    }
    return loss, (stats, metrics)


METHOD = SelfCon()
