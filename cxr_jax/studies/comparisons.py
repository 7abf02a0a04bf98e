"""Which pairs of models each study compares (no heavy imports: the pooled
report over training runs, `seeds`, uses these without JAX)."""
from __future__ import annotations

import itertools
from typing import Iterable


def study_b_pairs(rows: Iterable[str]) -> list[tuple[str, str]]:
  """The thesis's comparisons (sec. 4.4.2) among Table 4.2's `rows` (method
  names): Ours against every other row, and the ablation Res_SE-UNet against
  UNet_S (do the residual SE blocks help without the injected features?)."""
  rows = list(rows)
  pairs = [('Ours', other) for other in rows if other != 'Ours'] if (
      'Ours' in rows) else []
  if 'Res_SE-UNet' in rows and 'UNet_S' in rows:
    pairs.append(('Res_SE-UNet', 'UNet_S'))
  return pairs


def all_pairs(rows: Iterable[str]) -> list[tuple[str, str]]:
  """Every pair of models, in row order (Study A, as Tukey's HSD)."""
  return list(itertools.combinations(list(rows), 2))
