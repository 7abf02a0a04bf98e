"""Study B report: Tables 4.1 and 4.2, paired t-tests, Fig 4.2, CAM vs gaze.

`report(config, workdir, stages)` runs after the `sequence` job trained the
stages and baselines of `configs/cooperative.py` (`stages`: stage name -> its
resolved train config). It composes three steps: evaluate
(`cooperative_evaluate`: every model, loaded from its best checkpoint by
`cxr_jax.runs`, over the test split), statistics (`cooperative_statistics`)
and write (`cxr_jax.report.cooperative`). Rows whose stage is not in
`config.sequence` are left out; `config.bootstrap` sets the replicates of
the AUC CIs. Outputs in `workdir/report/`:
  table_4_1.{csv,md}      classification: OvR macro AUC (bootstrap 95% CI),
                          micro and Hand-Till AUC, per-class AUC, accuracy
  table_4_2.{csv,md}      saliency: KL, CC, HS (authors' definitions,
                          comparable with the thesis) mean +- std, the MIT
                          benchmark's KL/SIM, NSS, AUC-Judd and KL in the
                          other direction, KL(pred || gt); each metric's
                          own n
  ttests.{csv,md}         two-sided paired t-tests (paired by test image):
                          ours vs each saliency baseline, and the ablation
                          Res_SE-UNet vs UNet_S
  cam_vs_gaze.{csv,md}    beyond the thesis: each classifier's Grad-CAM
                          scored against the gaze maps with KL/CC/HS
  fig_4_2_grid.png        CXR, gaze map, ours, MT-UNet, Grad-CAM DenseNet-201
  per_image_saliency.csv  every per-image value behind the tables
  report.md               all of it, with the thesis's numbers beside ours
                          and the settings behind them (data, networks, gaze
                          recipe per model, split, injection, stage-3
                          schedule, init, machine)
  machine.json            CPU model and flags, versions, devices
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import jax
from absl import logging

from cxr_jax import runs
from cxr_jax.data import build_dataset
from cxr_jax.report import cooperative as writer
from cxr_jax.runtime import sharding
from cxr_jax.studies import cooperative_evaluate as evaluate
from cxr_jax.studies import cooperative_statistics as statistics


# Fig 4.2's Grad-CAM column: the first of these classifiers that ran.
CAM_FIGURE_STAGES = ('stage1_finetune', 'densenet201')


def figure_columns(results: Mapping[str, evaluate.StageResult],
                   sequence: Sequence[str]) -> list[tuple[str, Any]]:
  """Fig 4.2's map columns, each labelled with the network it ran: ours
  and MT-UNet's predicted maps, a DenseNet-201's Grad-CAM."""
  sal = statistics.saliency_stages(sequence)
  cols = [(f'{row}\n({results[sal[row][0]].network})',
           results[sal[row][0]].saliency['pred'])
          for row in ('Ours', 'MT-UNet') if row in sal]
  stage = next((s for s in CAM_FIGURE_STAGES if s in sequence), None)
  if stage:
    cols.append((f'Grad-CAM DenseNet-201\n({results[stage].network})',
                 results[stage].cams))
  return cols


def report(config, workdir: str, stages: Mapping[str, Any]
           ) -> dict[str, list[dict]]:
  """Evaluates every trained stage on the test split; writes the report.

  Returns Table 4.1, Table 4.2 and the t-tests as rows (on process 0; the
  other processes evaluate and return {}).
  """
  if 'bootstrap' not in config:
    raise ValueError('Study B report: config.bootstrap (bootstrap replicates '
                     'of the AUC 95% CIs) is missing; configs/cooperative.py '
                     'sets it (c.bootstrap = 1000).')
  t0 = time.time()
  splits = build_dataset(config.data)
  mesh = sharding.make_mesh()
  cls = {s[0] for s in statistics.classifier_stages(config.sequence).values()}
  sal = {s[0] for s in statistics.saliency_stages(config.sequence).values()}
  results = {}
  for name in (n for n in config.sequence if n in cls | sal):
    logging.info('Report: evaluating %s', name)
    run = runs.load(os.path.join(workdir, name), stages[name])
    results[name] = evaluate.evaluate(run, splits, mesh,
                                      classifier=name in cls,
                                      saliency_model=name in sal)
  tabs = statistics.compute(results, config.sequence,
                            bootstrap=config.bootstrap)
  if jax.process_index() != 0:
    return {}
  writer.write(os.path.join(workdir, 'report'), config, stages, tabs=tabs,
               test=splits['test'],
               fig_columns=figure_columns(results, config.sequence), t0=t0,
               results=results)
  return {k: tabs[k].rows for k in ('table_4_1', 'table_4_2', 'ttests')}
