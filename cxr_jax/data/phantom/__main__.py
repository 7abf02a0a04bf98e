"""Writes a phantom dataset in the real on-disk format.

  python -m cxr_jax.data.phantom --dataset=siim|gaze --out=DIR --num=N \\
      --seed=S [--size=PX]
"""
from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from cxr_jax.data import phantom


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command's flags (defined only when it runs as a program)."""
  f = dict(
      dataset=flags.DEFINE_enum('dataset', None, ['siim', 'gaze'],
                                'Which phantom to write.'),
      out=flags.DEFINE_string('out', None, 'Output folder.'),
      num=flags.DEFINE_integer('num', 400, 'Number of studies.',
                               lower_bound=1),
      seed=flags.DEFINE_integer('seed', 0, 'Random seed.'),
      size=flags.DEFINE_integer('size', 1024, 'Image side in pixels.',
                                lower_bound=32),
  )
  flags.mark_flags_as_required(['dataset', 'out'])
  return f


def main(argv: list[str], f: dict[str, flags.FlagHolder]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  phantom.write(f['dataset'].value, f['out'].value, f['num'].value,
                f['seed'].value, f['size'].value)
  logging.info('Wrote %d %s phantom studies to %s', f['num'].value,
               f['dataset'].value, f['out'].value)


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
