"""What an eye-gaze build leaves out, logged with counts and example ids.

Gaze data that never reaches the arrays changes the saliency metrics
silently unless it is reported: rows of `eye_gaze.csv` / `fixations.csv`
whose DICOM_ID the master sheet does not list, gaze points off the image,
and studies left without gaze (an all-zero gaze map: KL, CC and HS are
undefined for them) or without fixations (an empty fixation map: NSS and
AUC-Judd are undefined). The saliency evaluator counts the undefined values
per metric (`n_<metric>`, `n_undefined_<metric>`); this module names the
studies at build time.
"""
from __future__ import annotations

import logging
from typing import Mapping, NamedTuple, Sequence

import numpy as np

_EXAMPLES = 10  # ids named in a warning


class Read(NamedTuple):
  """What reading one study kept."""
  dicom_id: str
  dropped: int  # gaze points and fixations off the image, dropped
  has_gaze: bool  # the gaze map is not all zero
  has_fixations: bool  # the fixation map is not empty
  fixation_rows: bool  # fixations.csv has rows for this study


def _examples(ids: Sequence[str]) -> str:
  """The first ids, and how many more there are."""
  shown = ', '.join(repr(str(d)) for d in ids[:_EXAMPLES])
  more = len(ids) - _EXAMPLES
  return shown + (f' and {more} more' if more > 0 else '')


Table = Mapping[str, Mapping[str, np.ndarray]]  # egd_csv.read_gaze_csv's


def log_unknown_ids(tables: Mapping[str, Table], known: Sequence[str]
                    ) -> dict[str, tuple[int, int]]:
  """Warns about rows whose DICOM_ID is not in the master sheet (they are
  ignored). `tables`: file name -> `egd_csv.read_gaze_csv` result. Returns
  file name -> (rows, ids) ignored, for the files that have any."""
  known = set(known)
  out = {}
  for name, table in tables.items():
    unknown = sorted(set(table) - known)
    if not unknown:
      continue
    rows = sum(int(table[d]['line'].size) for d in unknown)
    first = int(min(table[d]['line'].min() for d in unknown))
    out[name] = (rows, len(unknown))
    logging.warning(
        '%s: %d row(s) of %d DICOM_ID(s) that master_sheet.csv does not '
        'list are ignored (first at line %d): DICOM_ID %s', name, rows,
        len(unknown), first, _examples(unknown))
  return out


def log_reads(reads: Sequence[Read], source: str) -> None:
  """Warns about dropped off-image points, and names the studies without
  gaze (in `source`, the recipe's CSV) or without fixations."""
  n_dropped = [r.dropped for r in reads if r.dropped]
  if n_dropped:
    logging.warning('Dropped %d gaze points off the image in %d of %d '
                    'studies (per-study counts logged above).',
                    sum(n_dropped), len(n_dropped), len(reads))
  no_gaze = [r.dicom_id for r in reads if not r.has_gaze]
  if no_gaze:
    logging.warning(
        '%d of %d studies have no gaze in %s inside the image, so an all-zero '
        'gaze map (KL, CC and HS are undefined for them and left out of '
        'those means): dicom_id %s', len(no_gaze), len(reads), source,
        _examples(no_gaze))
  no_fix = [r for r in reads if not r.has_fixations]
  if no_fix:
    no_rows = sum(not r.fixation_rows for r in no_fix)
    logging.warning(
        '%d of %d studies have no fixation in fixations.csv inside the image '
        '(%d of them no row at all), so an empty fixation map (NSS and '
        'AUC-Judd are undefined for them and left out of those means): '
        'dicom_id %s', len(no_fix), len(reads), no_rows,
        _examples([r.dicom_id for r in no_fix]))
