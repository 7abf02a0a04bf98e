"""Platform concerns: device meshes and parameter layout (`sharding`),
multi-process start-up (`distributed`), and process-level CPU settings that
must be applied before JAX starts its backend (`xla_flags`, `hostmem`).

Nothing here defines command-line flags: `main.py`, `launch/` and
`benchmarks/` own their flags and pass the values in.
"""
