"""Study orchestration: the reports that `sequence` jobs name.

`gradcam_benchmark` (Study A): classification, Grad-CAM-vs-mask metrics and
their statistics across the nine classifiers. `cooperative` (Study B).
"""
