"""cxr_jax: interpretable chest X-ray diagnosis in JAX/Flax."""
