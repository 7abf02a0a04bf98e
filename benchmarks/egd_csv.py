r"""Reading a real-size eye_gaze.csv: wall time and peak memory.

  .venv/bin/python -m benchmarks.egd_csv [--rows=3900000] \
      [--compare_rows=400000] [--dir=/tmp/egd_csv_bench] [--threads=1,2]

Writes a file of the real `eye_gaze.csv`'s shape (34 columns with the
dataset's names, about 360 bytes a row, 1,083 studies, long float text as in
the released file, some gaze off the image), then times
`cxr_jax.data.egd_csv.read_gaze_csv`:

* `numpy` (`cxr_jax.data.csv_columns`) on the full file, with each number
  of parsing threads in `--threads`;
* `numpy` and `csv` (the csv module and a float() per value, the reference
  and the reader before `csv_columns`) on the first `--compare_rows` rows,
  where both must return identical arrays (compared by a digest).

Each read runs in a fresh interpreter, so its peak resident memory
(`ru_maxrss`, which includes the interpreter and numpy, about 35 MB) is its
own. Prints one Markdown table row per read.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from cxr_jax.data import csv_columns
from cxr_jax.data import egd_csv

# The released eye_gaze.csv's header (fixations.csv adds SACCADE_MAG,
# SACCADE_DIR and VID_FRAME before X_ORIGINAL).
COLUMNS = ('SESSION_ID', 'MEDIA_ID', 'DICOM_ID', 'CNT', 'Time (in secs)',
           'TIMETICK(f=10000000)', 'FPOGX', 'FPOGY', 'FPOGS', 'FPOGD',
           'FPOGID', 'FPOGV', 'BPOGX', 'BPOGY', 'BPOGV', 'LPCX', 'LPCY', 'LPD',
           'LPS', 'LPV', 'RPCX', 'RPCY', 'RPD', 'RPS', 'RPV', 'BKID', 'BKDUR',
           'BKPMIN', 'LPMM', 'LPMMV', 'RPMM', 'RPMMV', 'X_ORIGINAL',
           'Y_ORIGINAL')


def _row_tails(rng: np.random.Generator, n: int) -> list[str]:
  """`n` different texts of the columns after DICOM_ID."""
  out = []
  for k in range(n):
    u = rng.random(18)
    # Float text like the released file's ('0.33879000000000004'): values
    # rounded to 5 places, then one ulp off, some scaled like pupil sizes.
    fl = [repr(float(np.round(v * (20 if i % 4 == 2 else 1), 5)
                     * (1 + 2.3e-16 * (i % 5 != 4)))) for i, v in enumerate(u)]
    out.append(','.join([
        str(k), f'{k / 60:.5f}', f'{696216388878 + k * 166667}.0', *fl[0:4],
        str(k % 50), '1', *fl[4:6], '1', *fl[6:10], '1', *fl[10:14], '1',
        '0', '0.0', str(20 + k % 7), fl[14], '1', fl[15], '1',
        str(int(u[16] * 3100) - 50), str(int(u[17] * 2600) - 50)]))
  return out


def write_gaze_csv(path: str, rows: int, studies: int = 1083, seed: int = 0,
                   distinct: int = 20000) -> None:
  """Writes an eye_gaze.csv of `rows` rows in blocks of one study each
  (`distinct` different row texts, cycled)."""
  rng = np.random.default_rng(seed)
  tails = _row_tails(rng, min(distinct, max(rows, 1)))
  assert len(tails[0].split(',')) + 3 == len(COLUMNS)
  ids = ['-'.join(f'{v:08x}' for v in rng.integers(0, 2**32, 5))
         for _ in range(studies)]
  per, done = -(-rows // studies), 0
  with open(path, 'w', newline='') as f:
    f.write(','.join(COLUMNS) + '\n')
    for d in ids:
      n = min(per, rows - done)
      f.write(''.join(f'{1 + (done + j) % 3},0,{d},'
                      f'{tails[(done + j) % len(tails)]}\n' for j in range(n)))
      done += n


def _measure(path: str, method: str, threads: int) -> None:
  """Reads `path` once (in this fresh process) and prints the figures."""
  csv_columns.THREADS = threads
  wall, cpu = time.perf_counter(), time.process_time()
  got = egd_csv.read_gaze_csv(path, method=method)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  h = hashlib.sha256()
  for d in sorted(got):
    h.update(d.encode())
    for k in sorted(got[d]):
      h.update(np.ascontiguousarray(got[d][k]).tobytes())
  print(json.dumps(dict(
      wall_s=wall, cpu_s=cpu, rows=int(sum(v['line'].size
                                           for v in got.values())),
      ids=len(got), digest=h.hexdigest()[:16],
      peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def _run(path: str, method: str, threads: int) -> dict:
  out = subprocess.run(
      [sys.executable, '-m', 'benchmarks.egd_csv', f'--measure={method}',
       f'--file={path}', f'--threads={threads}'], check=True,
      capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return json.loads(out.stdout.strip().splitlines()[-1])


def _file(folder: str, rows: int) -> str:
  path = os.path.join(folder, f'eye_gaze_{rows}.csv')
  if not os.path.isfile(path):
    write_gaze_csv(path + '.tmp', rows)
    os.replace(path + '.tmp', path)
  return path


def main(argv) -> None:
  """Generates the files, times the readers, prints the table."""
  del argv
  fl = flags.FLAGS
  threads = [int(t) for t in fl.threads]
  if fl.measure:
    _measure(fl.file, fl.measure, threads[0])
    return
  os.makedirs(fl.dir, exist_ok=True)
  print('| rows | MB | reader | threads | wall s | cpu s | peak RSS MB | '
        'digest |')
  print('|---:|---:|---|---:|---:|---:|---:|---|')
  digests = {}
  for rows, runs in (
      (fl.compare_rows, [('csv', 1), ('numpy', threads[-1])]),
      (fl.rows, [('numpy', t) for t in threads])):
    path = _file(fl.dir, rows)
    for method, t in runs:
      r = _run(path, method, t)
      digests.setdefault(rows, set()).add(r['digest'])
      print(f"| {r['rows']:,} | {os.path.getsize(path) / 1e6:,.0f} | "
            f"{method} | {t if method == 'numpy' else ''} | "
            f"{r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_mb']:,.0f} | "
            f"{r['digest']} |", flush=True)
  if any(len(d) != 1 for d in digests.values()):
    raise SystemExit('the readers returned different arrays')


def _define_flags() -> None:
  flags.DEFINE_integer('rows', 3_900_000, 'Rows of the full-size file.')
  flags.DEFINE_integer('compare_rows', 400_000,
                       'Rows of the file both readers read.')
  flags.DEFINE_string('dir', '/tmp/egd_csv_bench', 'Where the files go.')
  flags.DEFINE_list('threads', ['1', str(csv_columns.THREADS)],
                    'Parsing threads of the numpy reader (csv_columns.THREADS)'
                    ' on the full-size file, one read each.')
  flags.DEFINE_string('measure', '', 'Internal: read --file with this method.')
  flags.DEFINE_string('file', '', 'Internal: the file to read.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
