"""Tests for cxr_jax.data.augment and cxr_jax.data.pipeline (CPU, numpy)."""
from __future__ import annotations

import json
import pickle

from absl import flags
import ml_collections
import numpy as np
import pytest

from cxr_jax.data import augment
from cxr_jax.data import pipeline

# grain's worker processes read absl flags.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

_OFF = dict(noise_std=0.0, rotate_deg=0.0, hflip=False, brightness=0.0,
            contrast=0.0)


def _arrays(n: int = 42, h: int = 24, w: int = 20, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  fixmap = (rng.random((n, h, w)) > 0.97).astype(np.uint8)
  return dict(
      image=rng.normal(size=(n, h, w, 1)).astype(np.float32),
      label=(np.arange(n) % 3).astype(np.int32),
      mask=(rng.random((n, h, w)) > 0.5).astype(np.float32),
      gaze=rng.random((n, h, w)).astype(np.float32),
      fixmap=fixmap,
      index=np.arange(n, dtype=np.int32) + 1000)


def _take(it, k: int) -> list[dict]:
  return [next(it) for _ in range(k)]


def _assert_same(a: list[dict], b: list[dict]):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
      assert x[k].dtype == y[k].dtype


def _memmapped(arrays: dict, tmp_path) -> dict:
  out = {}
  for k, v in arrays.items():
    np.save(tmp_path / f'{k}.npy', v)
    out[k] = np.load(tmp_path / f'{k}.npy', mmap_mode='r')
  return out


# ------------------------------------------------------------- pipeline ---


def test_batch_structure():
  it = pipeline.train_iterator(_arrays(), batch_size=8, seed=0,
                               augment_cfg=augment.default_config())
  b = next(it)
  assert b['image'].shape == (8, 24, 20, 1) and b['image'].dtype == np.float32
  assert b['mask'].shape == b['gaze'].shape == b['fixmap'].shape == (8, 24, 20)
  assert b['fixmap'].dtype == np.uint8 and b['label'].dtype == np.int32
  assert b['index'].dtype == np.int32 and b['index'].min() >= 1000


def test_deterministic_for_seed_and_seeds_differ():
  cfg = augment.default_config()
  make = lambda s: pipeline.train_iterator(  # pylint: disable=g-long-lambda
      _arrays(), batch_size=8, seed=s, augment_cfg=cfg)
  a, b, c = _take(make(3), 4), _take(make(3), 4), _take(make(4), 4)
  _assert_same(a, b)
  assert not np.array_equal(a[0]['index'], c[0]['index'])
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_workers_match_in_process_and_resume(tmp_path):
  """2 workers over memmaps == 0 workers; a 0-worker state resumes there."""
  arrays = _arrays()
  cfg = augment.default_config()
  ref = pipeline.train_iterator(arrays, batch_size=8, seed=1, augment_cfg=cfg)
  expected = _take(ref, 7)
  it = pipeline.train_iterator(_memmapped(arrays, tmp_path), batch_size=8,
                               seed=1, augment_cfg=cfg, num_workers=2)
  try:
    _assert_same(_take(it, 4), expected[:4])
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    other = pipeline.train_iterator(arrays, batch_size=8, seed=1,
                                    augment_cfg=cfg, num_workers=0)
    other.set_state(state)
    _assert_same(_take(other, 3), expected[4:])
  finally:
    it.close()


def test_resume_bitwise():
  cfg = augment.default_config()
  make = lambda: pipeline.train_iterator(  # pylint: disable=g-long-lambda
      _arrays(), batch_size=8, seed=7, augment_cfg=cfg)
  it = make()
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  more = _take(it, 6)  # crosses the epoch boundary (5 batches per epoch)
  resumed = make()
  resumed.set_state(state)
  _assert_same(_take(resumed, 6), more)
  assert resumed.epoch == pytest.approx(9 * 8 / 40)


def test_set_state_rejects_other_settings():
  it = pipeline.train_iterator(_arrays(), batch_size=8, seed=0,
                               augment_cfg=None)
  state = it.get_state()
  other = pipeline.train_iterator(_arrays(), batch_size=8, seed=1,
                                  augment_cfg=None)
  with pytest.raises(ValueError, match='seed'):
    other.set_state(state)


def test_epochs_cover_records_and_reshuffle():
  it = pipeline.train_iterator(_arrays(n=42), batch_size=8, seed=0,
                               augment_cfg=None)
  epochs = [np.concatenate([b['index'] for b in _take(it, 5)])
            for _ in range(2)]
  for e in epochs:  # 42 // 8 * 8 = 40 distinct records per epoch
    assert len(set(e.tolist())) == 40
  assert not np.array_equal(epochs[0], epochs[1])


def test_shards_split_the_global_batch():
  arrays, cfg = _arrays(), augment.default_config()
  glob = _take(pipeline.train_iterator(arrays, batch_size=8, seed=2,
                                       augment_cfg=cfg), 5)
  shards = [_take(pipeline.train_iterator(
      arrays, batch_size=8, seed=2, augment_cfg=cfg, shard_index=p,
      shard_count=2), 5) for p in range(2)]
  seen = []
  for step in range(5):
    s0, s1 = shards[0][step], shards[1][step]
    assert s0['image'].shape[0] == s1['image'].shape[0] == 4
    assert not set(s0['index'].tolist()) & set(s1['index'].tolist())
    for k in glob[step]:
      np.testing.assert_array_equal(
          np.concatenate([s0[k], s1[k]]), glob[step][k], err_msg=k)
    seen += s0['index'].tolist() + s1['index'].tolist()
  assert len(seen) == len(set(seen)) == 40  # one epoch, no overlap


def test_memmap_source_pickles_as_reference(tmp_path):
  arrays = _memmapped(_arrays(n=10), tmp_path)
  view = {k: v[3:] for k, v in arrays.items()}  # offset into the file
  src = pipeline.ArraySource(view)
  blob = pickle.dumps(src)
  assert len(blob) < 4096  # no image data travels
  back = pickle.loads(blob)
  assert len(back) == 7
  for k in arrays:
    np.testing.assert_array_equal(back[2][k], arrays[k][5])


def test_eval_batches_cover_each_example_once():
  n, batch_size = 13, 4
  arrays = _arrays(n=n)
  for shard_count in (1, 2):
    per_process = [list(pipeline.eval_batches(
        arrays, batch_size=batch_size, shard_index=p,
        shard_count=shard_count)) for p in range(shard_count)]
    steps = pipeline.num_batches(n, batch_size)
    assert all(len(b) == steps for b in per_process)
    rows = {k: [] for k in ('index', 'image', 'valid')}
    for step in range(steps):
      for p in range(shard_count):
        b = per_process[p][step]
        assert b['valid'].dtype == bool
        assert b['image'].shape[0] == batch_size // shard_count
        for k in rows:
          rows[k].append(b[k])
    valid = np.concatenate(rows['valid'])
    assert valid.sum() == n
    np.testing.assert_array_equal(np.concatenate(rows['index'])[valid],
                                  arrays['index'])
    np.testing.assert_array_equal(np.concatenate(rows['image'])[valid],
                                  arrays['image'])
    assert (np.concatenate(rows['index'])[~valid] == -1).all()


# -------------------------------------------------------------- augment ---


def _square_example(h: int = 64, w: int = 80) -> dict:
  """A bright off-centre square, the same square as mask, gaze peaked in it."""
  image = np.zeros((h, w, 1), np.float32)
  image[12:32, 44:64] = 1.0
  mask = image[..., 0].copy()
  yy, xx = np.mgrid[:h, :w]
  gaze = np.exp(-((yy - 22) ** 2 + (xx - 54) ** 2) / 20.0).astype(np.float32)
  fixmap = np.zeros((h, w), np.uint8)
  fixmap[20, 50] = fixmap[25, 58] = 1
  return dict(image=image, mask=mask, gaze=gaze, fixmap=fixmap,
              label=np.int32(1), index=np.int32(5))


def test_geometric_augmentations_keep_fields_aligned():
  ex = _square_example()
  cfg = ml_collections.ConfigDict(dict(_OFF, rotate_deg=10.0, hflip=True))
  flipped = 0
  for seed in range(8):
    out = augment.augment_example(ex, np.random.default_rng(seed), cfg)
    bright, mask = out['image'][..., 0] > 0.5, out['mask'] > 0.5
    iou = (bright & mask).sum() / (bright | mask).sum()
    assert iou > 0.9, (seed, iou)
    peak = np.unravel_index(np.argmax(out['gaze']), out['gaze'].shape)
    assert mask[peak], seed
    assert out['gaze'].min() >= 0 and out['gaze'].max() == pytest.approx(1.0)
    ys, xs = np.nonzero(out['fixmap'])
    assert len(ys) == 2 and mask[ys, xs].all()
    flipped += np.nonzero(mask)[1].mean() < 40
    for k, v in ex.items():
      assert np.shape(out[k]) == np.shape(v)
      assert np.asarray(out[k]).dtype == np.asarray(v).dtype
  assert 0 < flipped < 8  # both flipped and unflipped outcomes occurred


def test_all_off_is_identity():
  ex = _square_example()
  ex['image'] = ex['image'] + np.random.default_rng(0).normal(
      size=ex['image'].shape).astype(np.float32)
  out = augment.augment_example(ex, np.random.default_rng(0),
                                ml_collections.ConfigDict(_OFF))
  for k in ex:
    np.testing.assert_array_equal(out[k], ex[k], err_msg=k)


@pytest.mark.parametrize('name,value', [
    ('noise_std', 0.05), ('rotate_deg', 10.0), ('hflip', True),
    ('brightness', 0.1), ('contrast', 0.1)])
def test_each_augmentation_alone(name, value):
  """Only the enabled augmentation acts; photometric ones leave fields."""
  ex = _square_example()
  ex['image'] = ex['image'] + np.random.default_rng(0).normal(
      scale=0.1, size=ex['image'].shape).astype(np.float32)
  cfg = ml_collections.ConfigDict(dict(_OFF, **{name: value}))
  changed = set()
  for seed in range(4):
    out = augment.augment_example(ex, np.random.default_rng(seed), cfg)
    changed |= {k for k in ex if not np.array_equal(out[k], ex[k])}
  geometric = name in ('rotate_deg', 'hflip')
  expected = {'image', 'mask', 'gaze', 'fixmap'} if geometric else {'image'}
  assert changed == expected


def test_disabling_one_keeps_the_others_draws():
  ex = _square_example()
  full = augment.default_config()
  no_noise = augment.default_config()
  no_noise.noise_std = 0.0
  a = augment.augment_example(ex, np.random.default_rng(1), full)
  b = augment.augment_example(ex, np.random.default_rng(1), no_noise)
  np.testing.assert_array_equal(a['mask'], b['mask'])
  diff = a['image'] - b['image']
  std = float(ex['image'].std())
  assert 0 < np.abs(diff).max() < 6 * 0.05 * std * 1.2


def test_without_drop_remainder_every_record_is_streamed():
  it = pipeline.train_iterator(_arrays(n=42), batch_size=8, seed=0,
                               augment_cfg=None, drop_remainder=False)
  stream = np.concatenate([b['index'] for b in _take(it, 11)])
  assert sorted(stream[:42].tolist()) == list(range(1000, 1042))
  assert sorted(stream[42:84].tolist()) == list(range(1000, 1042))


def test_resume_with_another_process_count():
  """A single-process state restores into 2 shards of the same batches."""
  arrays, cfg = _arrays(), augment.default_config()
  it = pipeline.train_iterator(arrays, batch_size=8, seed=5, augment_cfg=cfg)
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 2)
  shards = []
  for p in range(2):
    s = pipeline.train_iterator(arrays, batch_size=8, seed=5, augment_cfg=cfg,
                                shard_index=p, shard_count=2)
    s.set_state(state)
    shards.append(_take(s, 2))
  for step in range(2):
    for k in expected[step]:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][k], shards[1][step][k]]),
          expected[step][k], err_msg=k)
