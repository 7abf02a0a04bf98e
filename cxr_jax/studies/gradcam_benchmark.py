"""Study A report: classification and Grad-CAM reliability across models.

`report(config, workdir, stages)` runs after the `sequence` job of
`configs/gradcam_benchmark.py` trained one classifier per stage (`stages`:
stage name -> its resolved train config). It composes three steps:
evaluate (`gradcam_evaluate`: each model, loaded from its best checkpoint by
`cxr_jax.runs`, over the test split: class probabilities for every image,
and `config.cam.method` maps of the true class, or the predicted one:
`config.cam.targets`, for every image with a pneumothorax mask), statistics
(`gradcam_statistics`: tables and tests from those per-image arrays) and
write (`cxr_jax.report.gradcam`). Outputs in `workdir/report/`:

  table_3_1.{csv,md}     accuracy, precision, recall, ROC AUC with
                         class-stratified bootstrap 95% CIs; thesis values
  table_3_2.{csv,md}     Diff_GradCAM mean, std, min, max, n; thesis mean±std
  localisation.{csv,md}  EHR AUC, pointing game, relevance mass / rank,
                         top-k intersection, pixel AUC (mean ± std)
  anova_diff, tukey_diff one-way ANOVA + Tukey HSD across models on
  anova_ehr, tukey_ehr   Diff_GradCAM and on EHR AUC ({csv,md} each)
  friedman_diff,         supplementary, repeated measures (the same images
  wilcoxon_diff,         under every model): Friedman test and pairwise
  friedman_ehr,          Wilcoxon signed-rank with Holm's correction, on
  wilcoxon_ehr           Diff_GradCAM and on EHR AUC ({csv,md} each)
  per_image.csv          every per-image value behind the tables
  fig_3_1_heatmaps.png   patients x (image, each model's map + mask outline)
  fig_3_2_ehr_auc.png    mean EHR AUC per model, 95% bootstrap CI of the mean
  fig_cam_methods.png    `cam.compare_model`'s CAM methods, same patients
  report.md              all of the above, a summary, the settings (with
                         the machine), timings
  machine.json           CPU model and flags, versions, devices

Every output names the EHR variant and the CAM target policy. Only process 0
writes; every process computes (the CAM batches are sharded over the mesh).
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import jax
from absl import logging

from cxr_jax import runs
from cxr_jax.data import build_dataset
from cxr_jax.evaluators import cam_localization as cam_loc
from cxr_jax.report import gradcam as writer
from cxr_jax.runtime import sharding
from cxr_jax.studies import gradcam_evaluate as evaluate
from cxr_jax.studies import gradcam_statistics as statistics


def report(config, workdir: str, stages: Mapping[str, Any]
           ) -> dict[str, list[dict]]:
  """Evaluates every stage of `config.sequence`; writes `workdir/report/`.

  Returns every table's rows, keyed by file stem (on every process; only
  process 0 writes).
  """
  t0 = time.time()
  cam = config.cam
  test = build_dataset(config.data)['test']
  masked = cam_loc.with_masks(test)
  grid = evaluate.grid_positions(len(masked['label']), cam.grid_patients)
  mesh = sharding.make_mesh()
  main = jax.process_index() == 0
  compare = evaluate.compare_stage(cam, config.sequence)
  results, methods, methods_s = {}, {}, 0.0
  for i, name in enumerate(config.sequence):
    logging.info('Report [%d/%d]: evaluating %s', i + 1, len(config.sequence),
                 name)
    run = runs.load(os.path.join(workdir, name), stages[name])
    results[name] = evaluate.evaluate(name, run, test, masked, cam=cam,
                                      mesh=mesh, keep_cams=grid)
    if main and name == compare and grid:
      t = time.time()
      methods = evaluate.compare_methods(run, masked, grid,
                                         methods=cam.compare_methods,
                                         targets=cam.targets)
      methods_s = time.time() - t
  tabs = statistics.compute(results, cam, seed=config.seed)
  if main:
    writer.write(
        os.path.join(workdir, 'report'), config, stages, results=results,
        tabs=tabs, families=statistics.family_means(results),
        ehr_ci=statistics.mean_ci(statistics.groups(results, 'ehr_auc'),
                                  bootstrap=cam.bootstrap, seed=config.seed),
        test=test, masked=masked, grid=grid, methods=methods,
        compare=compare, methods_s=methods_s, t0=t0)
  return {stem: t.rows for stem, t in tabs.items()}
