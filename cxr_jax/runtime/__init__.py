"""Platform concerns: device meshes and parameter layout (`sharding`,
`partition`), multi-process start-up (`distributed`), and process-level
settings that must be applied before JAX starts its backend (`xla_flags`,
`hostmem`, and `startup`, which applies them all in order).

Nothing here defines command-line flags: `main.py`, `launch/` and
`benchmarks/` own their flags and pass the values in.
"""
