r"""Command line: predict new images with a trained run.

  python -m cxr_jax.predict --run=WORKDIR/stage3 --inputs=DIR_OR_FILE \
      --out=OUT [--inputs=MORE ...] [--cam=gradcam,hirescam] \
      [--cam_target=pred] [--batch=N] [--strict] [--save_maps] [FILES...]

Exit status: 0 when every input was predicted; 1 when some could not be
(each is named with its reason on the console and in OUT/errors.csv), or,
with --strict, at the first one; 2 when the run folder is not a finished
run (the message says what is missing) or an argument is wrong.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

import cxr_jax.predict.engine as engine
import cxr_jax.predict.inputs as inputs_lib
from cxr_jax.runtime import startup


def define_flags() -> dict[str, flags.FlagHolder]:
  """The command's flags (defined only when it runs as a program)."""
  return dict(
      run=flags.DEFINE_string(
          'run', None, 'A finished training run: its workdir (config.json, '
          'best/), e.g. WORKDIR/stage3 or workdirs/gradcam_demo/resnet50.'),
      inputs=flags.DEFINE_multi_string(
          'inputs', [], 'An image file (DICOM, PNG, JPEG) or a folder, '
          'searched recursively; repeat the flag or list files after the '
          'flags for more.'),
      out=flags.DEFINE_string('out', None, 'Output folder.'),
      cam=flags.DEFINE_list(
          'cam', ['gradcam'], "CAM methods of classifiers ('' = none): "
          'gradcam, hirescam, gradcam++, xgradcam, layercam, scorecam, '
          'eigencam.'),
      cam_target=flags.DEFINE_string(
          'cam_target', 'pred', "The class the CAMs explain: 'pred' (the "
          'predicted one) or a class name (e.g. pneumothorax).'),
      batch=flags.DEFINE_integer(
          'batch', 0, "Images per batch; 0 = the run's eval_batch_size.",
          lower_bound=0),
      strict=flags.DEFINE_bool(
          'strict', False, 'Stop at the first file that cannot be predicted.'),
      save_maps=flags.DEFINE_bool(
          'save_maps', False, 'Also write the raw maps as .npy.'),
      progress_every_s=flags.DEFINE_float(
          'progress_every_s', 10.0, 'Seconds between progress lines.'))


def main(argv: list[str], f: dict[str, flags.FlagHolder]) -> int:
  """Runs the prediction; returns the exit status (module docstring)."""
  paths = list(f['inputs'].value) + argv[1:]
  if not f['run'].value or not f['out'].value or not paths:
    print('error: --run, --out and at least one input (--inputs or files '
          'after the flags) are required.', file=sys.stderr)
    return 2
  startup.start()
  try:
    run, heads = engine.open_run(f['run'].value, [c for c in f['cam'].value
                                                  if c],
                                 f['cam_target'].value)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for note in heads.notes:
    logging.warning('%s', note)
  try:
    summary = engine.predict(
        run, heads, paths, f['out'].value, batch_size=f['batch'].value,
        strict=f['strict'].value, save_maps=f['save_maps'].value,
        progress_every_s=f['progress_every_s'].value)
  except inputs_lib.BadInputError as e:
    print(f'error: {e} (--strict stops at the first file that cannot be '
          f'predicted; see {f["out"].value}/errors.csv)', file=sys.stderr)
    return 1
  except inputs_lib.NoInputsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  total = summary.predicted + len(summary.errors)
  print(f'Predicted {summary.predicted} of {total} input files in '
        f'{summary.seconds:.1f} s: {summary.files["index.html"]}')
  if not summary.ok:
    print(f'{len(summary.errors)} could not be predicted: '
          f'{summary.files["errors.csv"]}', file=sys.stderr)
    for e in summary.errors:
      print(f'  {e.path}: {e.reason}', file=sys.stderr)
  return 0 if summary.ok else 1


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
