"""Where a traced step's device time goes: a summary of a `jax.profiler` trace.

  python -m benchmarks.trace_summary /tmp/prof     # a `jax.profiler.trace` dir

Reads the newest `perfetto_trace.json.gz` under the directory (written by
`jax.profiler.trace(dir, create_perfetto_trace=True)`) and prints, for each
device (`/device:GPU:0`, ...; the host when there is none):

- each timeline (thread) with its event count, summed and covered time;
- the busy fraction of the busiest stream: the union of its kernel intervals
  over the traced span, so gaps (launch overhead, host waits) show as the
  rest;
- the time by kind of work (attention, matmul, convolution, transposes and
  copies, other fusions, other), judged from kernel names (a fusion that
  transposes counts as a transpose);
- the top kernels by summed time (and the top HLO ops, where the trace has
  an 'XLA Ops' timeline, as GPU traces do).

It is the tool for a short lease on an accelerator: one command prints the
table, no profiler UI needed.
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import sys
from typing import Any, Iterable

# Kinds of work by kernel / op name (first match wins; lower-case names).
KINDS = (
    ('attention', re.compile(r'fmha|flash|attention|sdpa|cudnn.*mha|'
                             r'dot_do_o|convert_dq')),  # cuDNN's helpers
    ('convolution', re.compile(r'fprop|dgrad|wgrad|implicit_gemm|'
                               r'conv(?!ert)|winograd|fft|cudnn')),
    ('matmul', re.compile(r'gemm|cublas|cutlass|nvjet|xmma|matmul|\bdot|'
                          r'wgmma')),
    ('transpose/copy', re.compile(r'memcpy|memset|copy|transpose')),
    ('fusion', re.compile(r'fusion|loop_|input_|reduce|triton|elementwise')),
)


def kind_of(name: str) -> str:
  low = name.lower()
  for kind, pattern in KINDS:
    if pattern.search(low):
      return kind
  return 'other'


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
  """Total length covered by [start, end) intervals (overlaps counted once)."""
  total, cur_s, cur_e = 0., None, None
  for s, e in sorted(intervals):
    if cur_e is None or s > cur_e:
      if cur_e is not None:
        total += cur_e - cur_s
      cur_s, cur_e = s, e
    else:
      cur_e = max(cur_e, e)
  if cur_e is not None:
    total += cur_e - cur_s
  return total


def find_trace(path: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.is_file():
    return path
  found = sorted(path.rglob('perfetto_trace.json.gz'),
                 key=lambda p: p.stat().st_mtime)
  if not found:
    raise FileNotFoundError(f'{path}: no perfetto_trace.json.gz below it '
                            '(trace with create_perfetto_trace=True)')
  return found[-1]


def load_events(path: str | pathlib.Path) -> list[dict[str, Any]]:
  path = find_trace(path)
  opener = gzip.open if path.suffix == '.gz' else open
  with opener(path, 'rt') as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def summarise(events: list[dict[str, Any]], top: int = 25
              ) -> list[dict[str, Any]]:
  """Per device: timelines, busy fraction, time by kind, top kernels."""
  procs, threads = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      procs[e['pid']] = e['args']['name']
    elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e['pid'], e['tid'])] = e['args']['name']
  devices = [p for p, n in procs.items() if n.startswith('/device:')]
  if not devices:
    devices = list(procs)
  complete = collections.defaultdict(list)
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in devices:
      complete[(e['pid'], e.get('tid'))].append(e)
  out = []
  for pid in devices:
    lines = []
    for (p, tid), evs in complete.items():
      if p != pid:
        continue
      spans = [(e['ts'], e['ts'] + e.get('dur', 0.)) for e in evs]
      lines.append(dict(
          thread=threads.get((p, tid), str(tid)), events=len(evs),
          summed_us=sum(e.get('dur', 0.) for e in evs),
          covered_us=union_length(spans),
          span_us=max(s[1] for s in spans) - min(s[0] for s in spans),
          evs=evs))
    if not lines:
      continue
    # Kernels live on the 'Stream #...' timelines; the derived 'XLA Ops' /
    # 'XLA Modules' lines repeat them. Fall back to the busiest timeline.
    streams = [l for l in lines if l['thread'].lower().startswith('stream')]
    busiest = max(streams or lines, key=lambda l: l['covered_us'])
    by_kind = collections.defaultdict(float)
    for e in busiest['evs']:
      by_kind[kind_of(e['name'])] += e.get('dur', 0.)
    ops = [l for l in lines if l['thread'] == 'XLA Ops' and l is not busiest]
    out.append(dict(
        device=procs.get(pid, str(pid)),
        timelines=[{k: v for k, v in l.items() if k != 'evs'} for l in
                   sorted(lines, key=lambda l: -l['covered_us'])],
        stream=busiest['thread'],
        busy_fraction=busiest['covered_us'] / max(busiest['span_us'], 1e-9),
        by_kind=dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        top=_top(busiest['evs'], top),
        top_ops=_top(ops[0]['evs'], top) if ops else []))
  return out


def _top(evs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
  by_name = collections.defaultdict(lambda: [0., 0])
  for e in evs:
    by_name[e['name']][0] += e.get('dur', 0.)
    by_name[e['name']][1] += 1
  ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:n]
  return [dict(name=k, us=t, count=c) for k, (t, c) in ranked]


def report(summary: list[dict[str, Any]], steps: int = 1) -> str:
  """The summary as text; times per step when `steps` steps were traced."""
  rows = []
  for dev in summary:
    rows.append(f'== {dev["device"]} (times per step, {steps} traced)')
    for l in dev['timelines'][:8]:
      rows.append(f'  {l["thread"][:40]:40s} {l["events"] // steps:7d} ev '
                  f'{l["summed_us"] / steps / 1e3:9.2f} ms summed '
                  f'{l["covered_us"] / steps / 1e3:9.2f} ms covered')
    rows.append(f'  busiest stream {dev["stream"]!r}: busy '
                f'{100 * dev["busy_fraction"]:.1f}% of its span')
    total = sum(dev['by_kind'].values()) or 1.
    rows.append('  by kind: ' + ', '.join(
        f'{k} {v / steps / 1e3:.2f} ms ({100 * v / total:.0f}%)'
        for k, v in dev['by_kind'].items()))
    for title, key in (('kernels', 'top'), ("'XLA Ops'", 'top_ops')):
      if dev[key]:
        rows.append(f'  top {title}:')
      for k in dev[key]:
        rows.append(f'  {k["us"] / steps / 1e3:8.3f} ms '
                    f'{k["count"] // steps:5d}x  {k["name"][:110]}')
  return '\n'.join(rows)


def main(argv: list[str]) -> None:
  steps = int(argv[2]) if len(argv) > 2 else 1
  print(report(summarise(load_events(argv[1])), steps))


if __name__ == '__main__':
  main(sys.argv)
