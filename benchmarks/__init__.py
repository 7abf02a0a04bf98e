"""Speed benchmarks of cxr_jax against PyTorch references, measured in one run.

`python -m benchmarks.run --help`; see benchmarks/README.md.
"""
import sys
import types


def stub_missing_grain() -> None:
  """Lets `cxr_jax.train` import where grain is not installed (GPU images).

  Only `cxr_jax.data.pipeline` imports grain, and it uses it at import time
  only as base classes (`grain.transforms.Map`, `RandomMap`); the train-step,
  Grad-CAM and FLOP benchmarks never build a pipeline, so a stub suffices
  there. The loader benchmark is skipped with the stub in place.
  """
  try:
    import grain  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    stub = types.ModuleType('grain')
    stub.transforms = types.SimpleNamespace(Map=object, RandomMap=object)
    stub.STUB = True
    sys.modules['grain'] = stub
