"""WCL: weakly supervised contrastive learning (Zheng et al., ICCV 2021).

Two views of every image (both ``strong_policy``, as SimCLR's symmetric
views) go through the query encoder, each in its own forward so BatchNorm
sees one view at a time, as the official code. ``L_inst`` is NT-Xent over the
``2N`` first-head embeddings. The weak labels are the connected components
of each view's 1-NN graph on the second head (no gradient); the graph loss is
SupCon on the second head with the labels swapped between the views. The
loss is ``L_inst + graph_weight * L_graph`` at temperature ``t0``. In-batch:
no key encoder, no queue.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from maskcon_jax import losses
from maskcon_jax import models
from maskcon_jax.methods import base


class WCL(base.Method):
  """WCL over the shared encoder with a second BN-MLP head."""

  name = "wcl"
  salt = 2
  legacy_fields = {
      "wcl_same_coarse_nn": "same_coarse_nn",
      "wcl_graph_weight": "graph_weight",
  }

  def config_block(self):
    return ml_collections.ConfigDict(
        {
            # Restrict each sample's 1-NN to its own coarse class (uses the
            # coarse labels; the paper is unsupervised).
            "same_coarse_nn": False,
            # Weight of the graph loss (the paper adds it with weight 1).
            "graph_weight": 1.0,
        }
    )

  def validate(self, options, config):
    del config
    self.check_bool(options, "same_coarse_nn")
    self.check_number(options, "graph_weight")

  def view_policies(self, settings):
    return (settings.strong_policy, settings.strong_policy)

  def encoder(self, options, config, num_coarse):
    del options
    return models.Encoder(
        **models.encoder_fields(config, num_coarse),
        head="bn_mlp",
        second_head=True,
    )

  def forwards_per_image(self, options):
    del options
    return 6  # Two views, each forward and backward.

  def loss(self, ctx, params):
    t0 = ctx.settings.t0
    labels_B = ctx.labels_B
    views1, views2 = ctx.views
    allowed_BxB = (
        losses.same_coarse_mask(labels_B, labels_B)
        if ctx.options.same_coarse_nn
        else None
    )
    out1, stats = ctx.query_forward(params, ctx.state.batch_stats, views1)
    # The second forward starts from the first one's running statistics, as
    # two consecutive PyTorch forwards do; train-mode outputs don't use them.
    out2, stats = ctx.query_forward(params, stats, views2)
    z1_BxD = losses.l2_normalize(out1["projection"])
    z2_BxD = losses.l2_normalize(out2["projection"])
    g1_BxD = losses.l2_normalize(out1["projection2"])
    g2_BxD = losses.l2_normalize(out2["projection2"])
    comp1_B = losses.nn_component_labels(g1_BxD, allowed_BxB)
    comp2_B = losses.nn_component_labels(g2_BxD, allowed_BxB)
    same1_BxB = losses.label_positives(comp1_B)
    same2_BxB = losses.label_positives(comp2_B)
    inst = losses.nt_xent_loss(z1_BxD, z2_BxD, temperature=t0)
    graph = losses.wcl_graph_loss(
        g1_BxD, g2_BxD, same1_BxB, same2_BxB, temperature=t0
    )
    b = labels_B.shape[0]
    same_coarse = losses.same_coarse_mask(labels_B, labels_B)
    off_diag = jnp.logical_not(jnp.eye(b, dtype=bool))
    linked = jnp.logical_and(same1_BxB, off_diag)
    metrics = {
        "inst_loss": inst,
        "graph_loss": graph,
        "positive_similarity": jnp.mean(jnp.sum(z1_BxD * z2_BxD, axis=-1)),
        # Components of view 1 and how often their pairs share a coarse label.
        "num_components": jnp.sum(comp1_B == jnp.arange(b)).astype(jnp.float32),
        "component_coarse_purity": (
            jnp.sum(jnp.logical_and(linked, same_coarse))
            / jnp.maximum(jnp.sum(linked), 1)
        ),
    }
    return inst + ctx.options.graph_weight * graph, (stats, metrics)


METHOD = WCL()
