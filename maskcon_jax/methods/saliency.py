"""Saliency-guided masking on MoCo (Chin et al., WACV 2024).

The saliency of a view is the channel sum of the EMA key encoder's last
activation map of that view, on a ``grid`` x ``grid`` patch grid (the
official code uses a frozen supervised ResNet-50 instead, which would need
downloaded weights). The query is the strong view with a balanced share of
foreground and background patches hidden (ratio ~ ``query_ratio``); each of
the ``num_hard_negatives`` hard negatives is the weak (key) view with only
foreground patches hidden (ratio ~ ``negative_ratio``), embedded by the key
encoder and never enqueued. Every query gets its own image's negatives,
where the official code broadcasts one image's negative to the whole batch.
The loss is InfoNCE over ``[k, queue, alpha * t_1..M] / t0``.

The masks are sampled here, per example on the device; `Saliency.extras`
computes them (and the negatives' keys) without gradient before the loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from maskcon_jax import filters
from maskcon_jax import losses
from maskcon_jax import models
from maskcon_jax.methods import base

Array = jax.Array
STRATEGIES = ("hp", "blur", "mean")
FG_RULES = ("intent", "official")


def saliency_grid_map(feature_map_hxwxC: Array, grid: int) -> Array:
  """Channel sum of an activation map, resized to ``(grid, grid)`` patches."""
  saliency_hxw = jnp.sum(feature_map_hxwxC.astype(jnp.float32), axis=-1)
  if saliency_hxw.shape == (grid, grid):
    return saliency_hxw
  return jax.image.resize(saliency_hxw, (grid, grid), method="bilinear")


def foreground_patches(
    saliency_GxG: Array, fg_std: float = 0.6, rule: str = "intent"
) -> Array:
  """The foreground patches of a saliency grid (bool ``(G, G)``).

  With ``thr = mean - fg_std * std`` over the patches:

  * ``intent`` (the paper, and our default): a patch is foreground if its
    saliency is ``>= thr``, i.e. at or above the mean, or below it by at most
    ``fg_std`` standard deviations (the official rule, as one threshold).
  * ``official``: what the official ``localize.py`` computes. It sorts each
    row of the grid (``np.sort`` sorts along the last axis) and then tests the
    *sorted* value at ``(i, j)`` for each patch ``(i, j)``, so in every row
    the right-most columns are foreground, as many as that row has patches
    ``>= thr``, wherever the salient patches are.
  """
  mean = jnp.mean(saliency_GxG)
  threshold = mean - fg_std * jnp.std(saliency_GxG)
  if rule == "intent":
    return saliency_GxG >= threshold
  if rule == "official":
    return jnp.sort(saliency_GxG, axis=-1) >= threshold
  raise ValueError(
      f"Unknown foreground rule {rule!r}; expected one of " f"{FG_RULES}."
  )


def patch_mask_counts(
    fg_GxG: Array,
    ratio: Array,
    *,
    background: bool,
    fg_cap: float | None = None,
) -> tuple[Array, Array]:
  """How many foreground and background patches a mask of ``ratio`` hides.

  As the official code: ``round(ratio * FG_ratio * P)`` foreground patches
  (``P`` patches, ``FG_ratio`` their foreground share, i.e. that fraction of
  the foreground) and, for a query mask, ``int(P * ratio)`` minus that of
  the background, so the masking is balanced between both. ``fg_cap`` (the
  ``hp`` code's 0.55) caps ``ratio * FG_ratio``. The counts are clipped to
  what exists (the official code would index past the end).

  Returns:
    int32 ``(num_fg, num_bg)``.
  """
  num_patches = fg_GxG.size
  fg_count = jnp.sum(fg_GxG)
  fg_share = ratio * fg_count / num_patches
  if fg_cap is not None:
    fg_share = jnp.minimum(fg_share, fg_cap)
  num_fg = jnp.minimum(
      jnp.round(fg_share * num_patches).astype(jnp.int32), fg_count
  )
  if not background:
    return num_fg, jnp.zeros_like(num_fg)
  total = jnp.floor(num_patches * ratio).astype(jnp.int32)
  num_bg = jnp.clip(total - num_fg, 0, num_patches - fg_count)
  return num_fg, num_bg.astype(jnp.int32)


def _lowest(priority_P: Array, members_P: Array, count: Array) -> Array:
  """The ``count`` members with the lowest priority (a random subset)."""
  key_P = jnp.where(members_P, priority_P, 2.0 + priority_P)
  rank_P = jnp.argsort(jnp.argsort(key_P))
  return jnp.logical_and(members_P, rank_P < count)


def sample_patch_mask(
    uniforms: Array,
    fg_GxG: Array,
    ratio_range: tuple[float, float],
    *,
    background: bool,
    fg_cap: float | None = None,
) -> Array:
  """A random saliency-balanced patch mask (True = hidden), ``(G, G)``.

  Args:
    uniforms: ``1 + G * G`` uniforms: the ratio and each patch's priority.
    fg_GxG: bool foreground patches.
    ratio_range: ``ratio ~ U[low, high]``.
    background: also hide background patches (query masks); hard negatives
      hide foreground patches only.
    fg_cap: see ``patch_mask_counts``.
  """
  low, high = ratio_range
  ratio = low + (high - low) * uniforms[0]
  num_fg, num_bg = patch_mask_counts(
      fg_GxG, ratio, background=background, fg_cap=fg_cap
  )
  fg_P = fg_GxG.reshape(-1)
  priority_P = uniforms[1:]
  hidden_P = jnp.logical_or(
      _lowest(priority_P, fg_P, num_fg),
      _lowest(priority_P, jnp.logical_not(fg_P), num_bg),
  )
  return hidden_P.reshape(fg_GxG.shape)


def patch_mask_to_pixels(mask_GxG: Array, height: int, width: int) -> Array:
  """Pixel ``(y, x)`` belongs to patch ``(y * G // H, x * G // W)``."""
  g = mask_GxG.shape[0]
  rows = (jnp.arange(height) * g) // height
  cols = (jnp.arange(width) * g) // width
  return mask_GxG[rows][:, cols]


def saliency_masked_views(
    rng: Array,
    views_BxHxWxC: Array,
    saliency_BxGxG: Array,
    *,
    strategy: str,
    ratio_range: tuple[float, float],
    background: bool,
    noise_std: float,
    fg_std: float,
    blur: tuple[float, int],
    fg_rule: str = "intent",
) -> tuple[Array, Array]:
  """Masks each view on its patch grid and fills the hidden patches.

  Fills: ``hp`` Gaussian noise of ``noise_std`` (the encoder high-passes its
  input afterwards), ``blur`` the same pixels of a strongly blurred copy,
  ``mean`` the view's per-channel mean. Every example draws its own ratio,
  patches and noise (the official code shares one noise patch per batch).

  Returns:
    The masked views and the hidden-pixel masks ``(B, H, W)``.
  """
  b, h, w, c = views_BxHxWxC.shape
  g = saliency_BxGxG.shape[-1]
  mask_rng, noise_rng = jax.random.split(rng)
  uniforms = jax.random.uniform(mask_rng, (b, 1 + g * g))
  fg_BxGxG = jax.vmap(lambda s: foreground_patches(s, fg_std, fg_rule))(
      saliency_BxGxG
  )
  fg_cap = 0.55 if strategy == "hp" else None
  masks_BxGxG = jax.vmap(
      lambda u, fg: sample_patch_mask(
          u, fg, ratio_range, background=background, fg_cap=fg_cap
      )
  )(uniforms, fg_BxGxG)
  pixels_BxHxW = jax.vmap(lambda m: patch_mask_to_pixels(m, h, w))(masks_BxGxG)
  if strategy == "hp":
    fill = noise_std * jax.random.normal(noise_rng, views_BxHxWxC.shape)
  elif strategy == "blur":
    sigma, kernel_size = blur
    fill = jax.vmap(lambda x: filters.gaussian_blur(x, sigma, kernel_size))(
        views_BxHxWxC
    )
  elif strategy == "mean":
    fill = jnp.broadcast_to(
        jnp.mean(views_BxHxWxC, axis=(1, 2), keepdims=True), views_BxHxWxC.shape
    )
  else:
    raise ValueError(f"Unknown saliency strategy {strategy!r}.")
  masked = jnp.where(pixels_BxHxW[..., None], fill, views_BxHxWxC)
  return masked, pixels_BxHxW


def _scaled_gaussian(
    sigma: float | None,
    image_size: int,
    sigma_224: float,
    radius_in_sigmas: float,
) -> tuple[float, int]:
  """``(sigma, kernel_size)`` of a blur given at 224 px, scaled to the image.

  The kernel keeps the official radius in units of sigma (11 taps for
  sigma 5, 31 taps for sigma 10) and stays within the reflect padding limit.
  """
  if sigma is None:
    sigma = sigma_224 * image_size / 224
  radius = max(1, math.ceil(radius_in_sigmas * sigma))
  radius = min(radius, image_size - 1)
  return float(sigma), 2 * radius + 1


def highpass_filter(options, image_size: int) -> tuple[float, int]:
  """``(sigma, kernel_size)`` of the ``hp`` strategy (official: 5, 11 taps)."""
  return _scaled_gaussian(options.hp_sigma, image_size, 5.0, 1.0)


def blur_filter(options, image_size: int) -> tuple[float, int]:
  """``(sigma, kernel_size)`` of the ``blur`` fill (official: 10, 31 taps)."""
  return _scaled_gaussian(options.blur_sigma, image_size, 10.0, 1.5)


class Saliency(base.Method):
  """MoCo with a saliency-masked query and masked hard negatives."""

  name = "saliency"
  uses_queue = True
  salt = 4
  legacy_fields = {
      "alpha": "alpha",
      "num_hard_negatives": "num_hard_negatives",
      **{
          f"saliency_{field}": field
          for field in (
              "strategy",
              "grid",
              "fg_std",
              "fg_rule",
              "query_ratio",
              "negative_ratio",
              "query_noise_std",
              "negative_noise_std",
              "hp_sigma",
              "blur_sigma",
          )
      },
  }

  def config_block(self):
    return ml_collections.ConfigDict(
        {
            # Scale of the hard-negative similarities, and their number per
            # image (0: none, MoCo on the masked query).
            "alpha": 2.0,
            "num_hard_negatives": 1,
            # How hidden patches are filled: hp | blur | mean.
            "strategy": "hp",
            # Patches per side; unset: the key encoder's last feature map (7 at
            # 224 px, 4 at 28-32 px).
            "grid": config_dict.placeholder(int),
            # Foreground: saliency >= mean - fg_std * std; "intent" the paper's
            # rule, "official" the official code's row-sorted lookup (see
            # foreground_patches).
            "fg_std": 0.6,
            "fg_rule": "intent",
            # Ranges of the masking ratios of the query and the hard negatives.
            "query_ratio": (0.05, 0.25),
            "negative_ratio": (0.4, 0.7),
            # Noise of the hp fill.
            "query_noise_std": 0.18,
            "negative_noise_std": 0.14,
            # Filter widths; unset: the official 224-px sigmas (5 and 10)
            # scaled to image_size.
            "hp_sigma": config_dict.placeholder(float),
            "blur_sigma": config_dict.placeholder(float),
        }
    )

  def validate(self, options, config):
    self.check_number(options, "alpha")
    hard = options.num_hard_negatives
    if not base.is_int(hard) or hard < 0:
      self.fail(
          "num_hard_negatives",
          hard,
          "must be an integer >= 0 (0: no hard negatives)",
      )
    self.check_choice(options, "strategy", STRATEGIES)
    self.check_choice(options, "fg_rule", FG_RULES)
    grid = options.grid
    if grid is not None and (
        not base.is_int(grid) or not 1 <= grid <= config.image_size
    ):
      self.fail(
          "grid",
          grid,
          f"must be unset or an integer in [1, "
          f"{config.image_size}] (the patches per side)",
      )
    for field in ("fg_std", "query_noise_std", "negative_noise_std"):
      self.check_number(options, field)
    for field in ("hp_sigma", "blur_sigma"):
      if options[field] is not None:
        self.check_number(options, field, strict=True)
    for field in ("query_ratio", "negative_ratio"):
      ratio = options[field]
      if (
          not isinstance(ratio, (tuple, list))
          or len(ratio) != 2
          or not all(map(base.is_number, ratio))
          or not 0 <= ratio[0] <= ratio[1] <= 1
      ):
        self.fail(
            field,
            ratio,
            "must be a pair (low, high) with 0 <= low <= high <= 1",
        )

  def rng_names(self, options):
    return (
        "mask",
        "key",
        *(f"negative_key{m}" for m in range(options.num_hard_negatives)),
    )

  def view_policies(self, settings):
    return (settings.weak_policy, settings.strong_policy)

  def encoder(self, options, config, num_coarse):
    extra = {}
    if options.strategy == "hp":
      extra["input_highpass"] = highpass_filter(options, config.image_size)
    return models.Encoder(
        **models.encoder_fields(config, num_coarse),
        return_feature_map=True,
        **extra,
    )

  def forwards_per_image(self, options):
    # Key forwards of the weak and the strong view and of each hard
    # negative, and the query's forward and backward.
    return 2 + options.num_hard_negatives + 3

  def extras(self, ctx):
    o = ctx.options
    weak_views, strong_views = ctx.views
    b = ctx.labels_B.shape[0]
    # The strong view's map comes from a key-encoder pass over the strong
    # views; its BatchNorm statistics are dropped, so the key encoder's
    # running statistics follow the keys alone.
    strong_out, _ = ctx.key_forward(strong_views, ctx.target_batch_stats)
    grid = o.grid or ctx.key_out["feature_map"].shape[1]
    to_grid = jax.vmap(lambda f: saliency_grid_map(f, grid))
    key_saliency = to_grid(ctx.key_out["feature_map"])
    query_saliency = to_grid(strong_out["feature_map"])

    mask_rngs = jax.random.split(ctx.rngs["mask"], 1 + o.num_hard_negatives)
    mask_kwargs = dict(
        strategy=o.strategy,
        fg_std=o.fg_std,
        blur=blur_filter(o, ctx.settings.image_size),
        fg_rule=o.fg_rule,
    )
    query_views, query_pixels = saliency_masked_views(
        mask_rngs[0],
        strong_views,
        query_saliency,
        ratio_range=tuple(o.query_ratio),
        background=True,
        noise_std=o.query_noise_std,
        **mask_kwargs,
    )
    target_batch_stats = ctx.target_batch_stats
    hard, hidden = [], []
    for m in range(o.num_hard_negatives):
      negative_views, negative_pixels = saliency_masked_views(
          mask_rngs[1 + m],
          weak_views,
          key_saliency,
          ratio_range=tuple(o.negative_ratio),
          background=False,
          noise_std=o.negative_noise_std,
          **mask_kwargs,
      )
      # Each batch of negatives gets its own shuffle, as the official code.
      negative_out, target_batch_stats = ctx.key_forward(
          negative_views, target_batch_stats, rng=ctx.rngs[f"negative_key{m}"]
      )
      hard.append(losses.l2_normalize(negative_out["projection"]))
      hidden.append(jnp.mean(negative_pixels))
    k_BxD = ctx.k_BxD
    # No hard negatives (an ablation): MoCo on the masked query alone.
    t_BxMxD = (
        jnp.stack(hard, axis=1)
        if hard
        else jnp.zeros((b, 0, k_BxD.shape[-1]), k_BxD.dtype)
    )
    return ctx.replace(
        target_batch_stats=target_batch_stats,
        extras=dict(
            query_views=query_views,
            query_pixels=query_pixels,
            query_saliency=query_saliency,
            t_BxMxD=t_BxMxD,
            hidden=hidden,
        ),
    )

  def loss(self, ctx, params):
    out, batch_stats = ctx.query_forward(
        params, ctx.state.batch_stats, ctx.extras["query_views"]
    )
    q_BxD = losses.l2_normalize(out["projection"])
    loss = losses.hard_negative_moco_loss(
        q_BxD,
        ctx.k_BxD,
        ctx.state.queue_KxD,
        ctx.extras["t_BxMxD"],
        t0=ctx.settings.t0,
        alpha=ctx.options.alpha,
    )
    return loss, (batch_stats, q_BxD)

  def metrics(self, ctx, aux):
    q_BxD, o, extras = aux, ctx.options, ctx.extras
    metrics = {
        "positive_similarity": jnp.mean(jnp.sum(q_BxD * ctx.k_BxD, axis=-1)),
        "query_hidden_fraction": jnp.mean(extras["query_pixels"]),
        "foreground_fraction": jnp.mean(
            jax.vmap(lambda s: foreground_patches(s, o.fg_std, o.fg_rule))(
                extras["query_saliency"]
            )
        ),
    }
    if extras["hidden"]:
      metrics["hard_negative_similarity"] = jnp.mean(
          jnp.einsum("bd,bmd->bm", q_BxD, extras["t_BxMxD"])
      )
      metrics["negative_hidden_fraction"] = jnp.mean(
          jnp.stack(extras["hidden"])
      )
    return metrics


METHOD = Saliency()
