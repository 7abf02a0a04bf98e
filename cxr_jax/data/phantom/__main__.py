"""Writes a phantom dataset in the real on-disk format.

  python -m cxr_jax.data.phantom --dataset=siim|gaze --out=DIR --num=N \\
      --seed=S [--size=PX]
"""
from __future__ import annotations

from absl import app, flags, logging

from cxr_jax.data import phantom

_DATASET = flags.DEFINE_enum('dataset', None, ['siim', 'gaze'],
                             'Which phantom to write.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.')
_NUM = flags.DEFINE_integer('num', 400, 'Number of studies.', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_SIZE = flags.DEFINE_integer('size', 1024, 'Image side in pixels.',
                             lower_bound=32)
flags.mark_flags_as_required(['dataset', 'out'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  phantom.write(_DATASET.value, _OUT.value, _NUM.value, _SEED.value,
                _SIZE.value)
  logging.info('Wrote %d %s phantom studies to %s', _NUM.value, _DATASET.value,
               _OUT.value)


if __name__ == '__main__':
  app.run(main)
