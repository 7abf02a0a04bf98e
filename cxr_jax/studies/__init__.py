"""Study orchestration: the reports that `sequence` jobs name.

Each report is three steps, composed by the study's `report(config,
workdir, stages)`: evaluate (`*_evaluate`: a run loaded by `cxr_jax.runs`
-> per-image arrays), statistics (`*_statistics`: pure functions, arrays ->
tables and tests) and write (`cxr_jax.report.gradcam` / `.cooperative`).

`gradcam_benchmark` (Study A): classification, Grad-CAM-vs-mask metrics and
their statistics across the nine classifiers. `cooperative` (Study B):
classification, saliency and their paired tests. `seeds` pools either
study's reports over training runs; `comparisons` names the pairs compared.
"""
