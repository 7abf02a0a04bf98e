"""cxr_jax.report: CSV + Markdown tables and PNG figures."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from cxr_jax.report import figures
from cxr_jax.report import machine
from cxr_jax.report import tables


def _rows():
  return [dict(model='vgg16', n=3, mean=0.1234567891234, ok=True,
               note='a, "quoted" | pipe'),
          dict(model='vit_b16', n=5, mean=float('nan'), ok=False,
               note='x', extra=np.float32(2.5))]


def test_csv_round_trip_keeps_full_precision(tmp_path):
  stem = str(tmp_path / 'sub' / 't')
  tables.write_table(_rows(), stem, title='T')
  back = tables.read_csv(stem + '.csv')
  assert [r['model'] for r in back] == ['vgg16', 'vit_b16']
  assert list(back[0]) == ['model', 'n', 'mean', 'ok', 'note', 'extra']
  assert float(back[0]['mean']) == 0.1234567891234
  assert math.isnan(float(back[1]['mean']))
  assert back[0]['note'] == 'a, "quoted" | pipe'
  assert back[0]['extra'] == '' and float(back[1]['extra']) == 2.5
  assert int(back[1]['n']) == 5 and back[1]['ok'] == 'False'


def test_markdown_shape(tmp_path):
  stem = str(tmp_path / 't')
  md = tables.write_table(_rows(), stem, title='My table', floatfmt='.3f')
  assert open(stem + '.md').read() == md
  lines = md.strip().split('\n')
  assert lines[0] == '### My table' and lines[1] == ''
  table = lines[2:]
  assert len(table) == 2 + 2  # header, rule, two rows
  n_cols = 6
  for line in table:
    assert line.startswith('|') and line.endswith('|')
    assert line.replace('\\|', '').count('|') == n_cols + 1
  assert '0.123' in table[2] and 'n/a' in table[3]


def test_display_rows_and_formatters(tmp_path):
  stem = str(tmp_path / 't')
  md = tables.write_table([dict(a=0.5, s=0.1)], stem,
                          display_rows=[dict(a=tables.mean_std(0.5, 0.1))])
  assert '0.500 ± 0.100' in md
  assert tables.read_csv(stem + '.csv') == [dict(a='0.5', s='0.1')]
  assert tables.mean_std(float('nan'), 1.0) == 'n/a'
  assert tables.mean_std(0.25, float('nan')) == '0.250'
  assert tables.with_ci(0.9, 0.85, 0.95) == '0.900 [0.850, 0.950]'


def test_empty_table(tmp_path):
  md = tables.write_table([], str(tmp_path / 'e'))
  assert '(no rows)' in md
  assert os.path.getsize(str(tmp_path / 'e.csv')) > 0


def _png_size(path):
  assert os.path.getsize(path) > 1000
  with Image.open(path) as im:
    return im.size


def test_bar_chart_size(tmp_path):
  path = figures.bar_chart(['a', 'b', 'c'], [0.2, float('nan'), 0.5],
                           errors=np.array([[0.1, 0, 0.05], [0.1, 0, 0.1]]),
                           path=str(tmp_path / 'bar.png'), title='t',
                           figsize=(4, 3), dpi=50)
  assert _png_size(path) == (200, 150)


@pytest.mark.parametrize('title', ['', 'A grid'])
def test_image_grid_layouts_and_size(tmp_path, title):
  rng = np.random.default_rng(0)
  img = rng.normal(size=(16, 16)).astype(np.float32)
  heat = rng.uniform(size=(8, 8)).astype(np.float32)  # stretched to 16x16
  mask = np.zeros((16, 16), np.float32)
  mask[4:9, 3:10] = 1
  # per-column overlay flags + one mask per row (the Study A/B layout)
  rows = [[img, heat, heat], [img[..., None], heat, None]]
  p1 = figures.image_grid(rows, path=str(tmp_path / 'a.png'),
                          col_labels=['cxr', 'm1', 'm2'], row_labels=['p0'],
                          overlays=[False, True, True], contours=[mask, None],
                          title=title, cell_inches=1.0, dpi=60)
  assert _png_size(p1) == figures.grid_size_px(2, 3, cell_inches=1.0, dpi=60,
                                               title=title)
  assert _png_size(p1)[0] == 180
  # full per-cell layouts, another colormap per column
  p2 = figures.image_grid([[img, mask]], path=str(tmp_path / 'b.png'),
                          overlays=[[heat, None]], contours=[[mask, None]],
                          cmap=['gray', 'hot'], cell_inches=1.5, dpi=40)
  assert _png_size(p2) == figures.grid_size_px(1, 2, cell_inches=1.5, dpi=40)


def test_image_grid_errors(tmp_path):
  img = np.zeros((4, 4))
  with pytest.raises(ValueError, match='rows x 2 columns'):
    figures.image_grid([[img, img]], path=str(tmp_path / 'x.png'),
                       overlays=[[img]])
  with pytest.raises(ValueError, match='column 0'):
    figures.image_grid([[img, img]], path=str(tmp_path / 'x.png'),
                       overlays=[True, True])


def test_machine_reads_cpu_model_and_flags(tmp_path):
  x86 = ('processor\t: 0\nmodel name\t: Some CPU @ 2GHz\nflags\t\t: fpu '
         'sse4_2 avx2 avx512f fma\n\nprocessor\t: 1\nmodel name\t: other\n')
  assert machine._cpuinfo(x86) == ('Some CPU @ 2GHz',
                                   ['fpu', 'sse4_2', 'avx2', 'avx512f', 'fma'])
  arm = 'processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd0c\n'
  assert machine._cpuinfo(arm) == ('', ['fp', 'asimd', 'sve'])
  info = machine.write(str(tmp_path / 'r'))
  assert json.load(open(tmp_path / 'r' / 'machine.json')) == info
  assert info['device_count'] >= 1 and info['devices']
  assert set(machine.isa_flags(info)) <= set(info['cpu']['flags'])
  line = machine.markdown(info)
  assert line.startswith('- Machine: ') and info['jaxlib'] in line
  assert 'machine.json' in line
