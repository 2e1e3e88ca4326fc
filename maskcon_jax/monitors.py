"""What a run reports about its encoder while and after it trains.

* `evaluate`: fine and coarse Recall@K of the test split, fine Recall@1
  within each coarse class, and `target_diagnostics`; the numbers
  ``results.json`` and the evaluation summaries hold.
* `knn_monitor`: a cheap online k-NN accuracy for watching a run.
* `target_diagnostics`: where MaskCon's soft target points for the current
  key encoder.

Each takes ``(state, dataset, config, embedder)`` and changes nothing.
"""

from __future__ import annotations

from maskcon_jax import embedding
from maskcon_jax import evaluation
from maskcon_jax import input_pipeline
from maskcon_jax import methods
from maskcon_jax import train_state


def knn_monitor(
    state, dataset, config, embedder: embedding.Embedder
) -> float | None:
  """Cheap online k-NN: fine top-1 of a test subset against a train subset.

  The first ``knn_monitor_size`` items of each split (in-memory data with
  fine labels only), cosine similarity of backbone features, k = 20 with
  InstDisc's weighted vote. Meant for watching a run, not for reporting.
  """
  if (
      isinstance(dataset, input_pipeline.StreamingDataset)
      or not dataset.has_fine_labels
  ):
    return None
  size = config.get("knn_monitor_size") or 2000
  variables = train_state.query_variables(state)
  bank = embedder.arrays(variables, dataset.train_images[:size])["features"]
  queries = embedder.arrays(variables, dataset.test_images[:size])["features"]
  return evaluation.knn_classify(
      bank,
      dataset.train_fine[:size],
      queries,
      dataset.test_fine[:size],
      num_classes=dataset.hierarchy.num_fine,
  )


# Training items whose keys stand for the queries of `target_diagnostics`.
TARGET_DIAGNOSTIC_QUERIES = 512


def target_diagnostics(
    state, dataset, config, embedder: embedding.Embedder
) -> dict[str, float]:
  """Where MaskCon's soft target points, for the current key encoder.

  The key encoder embeds (test views, BN in eval mode) up to
  ``config.queue_size`` training items as a stand-in queue and the next
  `TARGET_DIAGNOSTIC_QUERIES` as queries; `evaluation.
  soft_target_diagnostics` at ``config.t`` reports the share of the
  neighbour target on the query's own fine class, against the share a
  uniform same-coarse target (grafit) gives, and both entropies. Unlike the
  training queue, every key comes from the current encoder. For every queue
  mode (what MaskCon's target would be with that mode's encoder); empty for
  the in-batch modes and for data without in-memory fine labels.
  """
  if (
      config.mode not in methods.QUEUE_MODES
      or isinstance(dataset, input_pipeline.StreamingDataset)
      or not dataset.has_fine_labels
      or dataset.num_train < 4
  ):
    return {}
  num_queries = min(TARGET_DIAGNOSTIC_QUERIES, dataset.num_train // 2)
  num_queue = min(config.queue_size, dataset.num_train - num_queries)
  items = slice(0, num_queue + num_queries)
  projections = evaluation.l2_normalize_np(
      embedder.arrays(
          train_state.key_variables(state), dataset.train_images[items]
      )["projection"]
  )
  fine, coarse = dataset.train_fine[items], dataset.train_coarse[items]
  queue, queries = slice(0, num_queue), slice(num_queue, None)
  return evaluation.soft_target_diagnostics(
      projections[queries],
      fine[queries],
      coarse[queries],
      projections[queue],
      fine[queue],
      coarse[queue],
      t=config.t,
  )


def evaluate(
    state, dataset, config, embedder: embedding.Embedder
) -> dict[str, float]:
  """Fine and coarse Recall@K on the test split's backbone features, and
  fine Recall@K within each coarse class, plus `target_diagnostics`.

  Data without fine labels reports coarse retrieval only.
  """
  emb = embedder.split(train_state.query_variables(state), dataset, "test")
  ks = tuple(config.retrieval_ks)
  metrics = {}
  levels = [("coarse", emb["coarse"])]
  if emb["fine"] is not None:
    levels.insert(0, ("fine", emb["fine"]))
  for level, labels in levels:
    recalls = evaluation.recall_at_k(emb["features"], labels, ks)
    metrics.update({f"{level}_recall@{k}": v for k, v in recalls.items()})
  if emb["fine"] is not None:
    within = evaluation.within_group_recall_at_k(
        emb["features"], emb["fine"], emb["coarse"], (1,)
    )
    metrics["fine_within_coarse_recall@1"] = within[1]
  metrics.update(target_diagnostics(state, dataset, config, embedder))
  return metrics
