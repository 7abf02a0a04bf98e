r"""Prediction with a trained run on new images: probabilities, maps, a page.

  python -m cxr_jax.predict --run=WORKDIR/stage3 --inputs=DIR_OR_FILE \
      --out=OUT [--cam=gradcam,hirescam] [--cam_target=pred] [--batch=N] \
      [--strict] [--save_maps]

Any finished training run (`cxr_jax.runs`): a Study A classifier gives the
pneumothorax probability and its CAMs; Study B's full model the three class
probabilities, the predicted gaze map and Grad-CAM; a baseline whatever
heads it has (`model.heads`). Each image is read (DICOM, PNG, JPEG; folders
searched recursively: `inputs`) and preprocessed by the run's dataset's
`preprocess_image`, the function its training data was built with, from the
data config in the run's `config.json`. Batches are jitted and split over
the local devices. The outputs (`outputs`): predictions.csv, errors.csv,
an overlay PNG per image and map, optionally the raw maps, and index.html.

Library use:

  run, heads = predict.open_run('workdirs/gradcam_demo/resnet50', ['gradcam'])
  summary = predict.predict(run, heads, ['scans/'], 'out/')
"""
from cxr_jax.predict.engine import Summary, open_run, predict
from cxr_jax.predict.inputs import BadInputError

__all__ = ['BadInputError', 'Summary', 'open_run', 'predict']
