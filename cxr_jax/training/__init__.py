"""The trainer's parts: the train step and its state (`step`), freezing
(`freezing`), checkpoint selection (`selection`), the checks a config passes
before training (`checks`) and resuming a run (`resume`). `cxr_jax.train.run`
composes them."""
