"""maskcon_jax: fine-grained image embeddings from coarse labels in JAX/Flax."""

__version__ = "0.1.0"
