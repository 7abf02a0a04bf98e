"""Speed benchmarks of cxr_jax against PyTorch references, measured in one run.

`python -m benchmarks.run --help`; see benchmarks/README.md.
"""
