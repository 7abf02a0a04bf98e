"""DICOM (and PNG/JPEG) reading and writing for chest radiographs.

`read_dicom` returns a float32 image in [0, 1] with the "brighter = denser"
convention, whatever the file's photometric interpretation, bit depth,
rescale and windowing tags say. The order follows the DICOM grayscale
pipeline (PS3.3 C.11 / PS3.4 N.2):

  stored values -> mask to BitsStored -> Modality LUT (slope/intercept or
  LUT sequence) -> VOI LUT (LUT sequence, else the first window, else the
  image's own min..max) -> invert if MONOCHROME1.

`write_dicom` writes a valid CR / DX file (pydicom 3, explicit VR little
endian) that the phantom generators use so the same reader serves real and
synthetic studies.
"""
from __future__ import annotations

import datetime
import math
import os
from typing import Any, Mapping

import numpy as np
import pydicom
from pydicom import pixels
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_SOP_CLASS = '1.2.840.10008.5.1.4.1.1.1'  # Computed Radiography Image Storage
DX_SOP_CLASS = '1.2.840.10008.5.1.4.1.1.1.1'  # Digital X-Ray, For Presentation
_UID_ROOT = '1.2.826.0.1.3680043.8.498.'  # pydicom's registered root


def _mask_bits(arr: np.ndarray, ds: Dataset) -> np.ndarray:
  """Keeps only the BitsStored low bits (sign-extends signed data)."""
  bits_alloc = int(ds.get('BitsAllocated', arr.dtype.itemsize * 8))
  bits = int(ds.get('BitsStored', bits_alloc))
  if not 0 < bits <= bits_alloc:
    raise ValueError(f'BitsStored={bits} with BitsAllocated={bits_alloc}')
  if bits >= arr.dtype.itemsize * 8 or not np.issubdtype(arr.dtype, np.integer):
    return arr
  if int(ds.get('PixelRepresentation', 0)) == 0:
    return arr & np.asarray((1 << bits) - 1, dtype=arr.dtype)
  shift = arr.dtype.itemsize * 8 - bits
  unsigned = arr.view(arr.dtype.str.replace('i', 'u'))
  return ((unsigned << shift).view(arr.dtype) >> shift).astype(arr.dtype)


def _modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
  """Applies the Modality LUT sequence or RescaleSlope/RescaleIntercept."""
  if 'ModalityLUTSequence' in ds:
    return np.asarray(pixels.apply_modality_lut(arr, ds), np.float64)
  slope = _finite(ds.get('RescaleSlope', 1.0) or 1.0, 'RescaleSlope')
  intercept = _finite(ds.get('RescaleIntercept', 0.0) or 0.0,
                      'RescaleIntercept')
  return arr.astype(np.float64) * slope + intercept


def _finite(value: Any, keyword: str) -> float:
  """`value` as a float; a NaN or infinite tag is an error naming it (it
  would turn every pixel into NaN)."""
  x = float(value)
  if not math.isfinite(x):
    raise ValueError(f'{keyword} is {value!r}, not a finite number')
  return x


def _first(value: Any) -> float:
  """First value of a possibly multi-valued DICOM element."""
  if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
    return float(value[0])
  return float(value)


def _window(x: np.ndarray, ds: Dataset) -> np.ndarray:
  """VOI transform to [0, 1]: LUT sequence, else window, else min..max."""
  if 'VOILUTSequence' in ds and len(ds.VOILUTSequence):
    item = ds.VOILUTSequence[0]
    out_bits = int(item.LUTDescriptor[2])
    y = np.asarray(pixels.apply_voi_lut(x, ds, prefer_lut=True), np.float64)
    return np.clip(y / float((1 << out_bits) - 1), 0.0, 1.0)
  if 'WindowCenter' in ds and 'WindowWidth' in ds:
    c = _finite(_first(ds.WindowCenter), 'WindowCenter')
    w = _finite(_first(ds.WindowWidth), 'WindowWidth')
    func = str(ds.get('VOILUTFunction', 'LINEAR')).upper()
    if func == 'SIGMOID':
      return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / max(w, 1e-6)))
    if func == 'LINEAR_EXACT':
      return np.clip((x - c) / max(w, 1e-6) + 0.5, 0.0, 1.0)
    if w >= 1.0:  # LINEAR (PS3.3 C.11.2.1.2.1)
      return np.clip((x - (c - 0.5)) / max(w - 1.0, 1e-6) + 0.5, 0.0, 1.0)
  lo, hi = float(x.min()), float(x.max())
  return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
  """Reads a single-frame grayscale DICOM as float32 (H, W) in [0, 1].

  Brighter = denser (MONOCHROME1 is inverted). Raises ValueError naming the
  file for unreadable, truncated, multi-frame/colour or non-image files, for
  non-finite rescale or window tags, and for a blank image (one value
  everywhere), which would otherwise pass as an all-black radiograph.
  """
  try:
    ds = pydicom.dcmread(os.fspath(path))
  except Exception as e:  # pydicom raises many types for corrupt files
    raise ValueError(f'{path}: not a readable DICOM file ({e})') from e
  if 'PixelData' not in ds:
    raise ValueError(f'{path}: DICOM has no PixelData (not an image)')
  photometric = str(ds.get('PhotometricInterpretation', '')).upper()
  if photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise ValueError(f'{path}: unsupported PhotometricInterpretation '
                     f'{photometric!r} (expected MONOCHROME1/2)')
  try:
    arr = ds.pixel_array
  except Exception as e:
    raise ValueError(f'{path}: cannot decode pixel data ({e})') from e
  if arr.ndim != 2:
    raise ValueError(f'{path}: expected a 2-D single-frame image, got pixel '
                     f'array of shape {arr.shape}')
  try:
    x = _modality_lut(_mask_bits(arr, ds), ds)
    if not np.all(np.isfinite(x)):
      raise ValueError('non-finite values after the Modality LUT')
    y = _window(x, ds)
  except (ValueError, TypeError, AttributeError, KeyError) as e:
    raise ValueError(f'{path}: invalid grayscale tags ({e})') from e
  if photometric == 'MONOCHROME1':
    y = 1.0 - y
  if not np.all(np.isfinite(y)):
    raise ValueError(f'{path}: non-finite values after rescale/window')
  _check_not_blank(path, y, f'after rescale/window; stored values '
                   f'{arr.min()}..{arr.max()}')
  return np.clip(y, 0.0, 1.0).astype(np.float32)


def _check_not_blank(path: str | os.PathLike, img: np.ndarray,
                     detail: str) -> None:
  """Raises a ValueError naming the file when every pixel has one value."""
  lo, hi = float(np.min(img)), float(np.max(img))
  if lo == hi:
    raise ValueError(f'{path}: blank image: every pixel is {lo:.4g} '
                     f'({detail}); not a radiograph')


def stable_uid(key: str) -> str:
  """A UID derived from `key` alone (the same file name -> the same UID)."""
  return generate_uid(prefix=_UID_ROOT, entropy_srcs=[key])


def _stored_pixels(path: str | os.PathLike, pixels_uint16: np.ndarray,
                   photometric: str, bits_stored: int) -> np.ndarray:
  """Checks the arguments of `write_dicom`; the pixels as little-endian
  uint16."""
  px = np.asarray(pixels_uint16)
  if px.ndim != 2:
    raise ValueError(f'{path}: pixels must be 2-D, got shape {px.shape}')
  if photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise ValueError(f'{path}: photometric must be MONOCHROME1/2, got '
                     f'{photometric!r}')
  if not 1 <= bits_stored <= 16:
    raise ValueError(f'{path}: bits_stored must be in 1..16, got {bits_stored}')
  if px.size and (px.min() < 0 or px.max() >= (1 << bits_stored)):
    raise ValueError(f'{path}: pixel values [{px.min()}, {px.max()}] do not '
                     f'fit in {bits_stored} stored bits')
  return px.astype('<u2')


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
  """The file meta group (explicit VR little endian)."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  meta.ImplementationClassUID = _UID_ROOT + '1'
  meta.ImplementationVersionName = 'CXR_JAX_1'
  return meta


def _set_study_tags(ds: Dataset, sop_class: str, sop_uid: str, modality: str,
                    patient_id: str) -> None:
  """Patient, study, series and instance tags of a frontal chest study."""
  now = datetime.datetime(2019, 1, 1)
  ds.SpecificCharacterSet = 'ISO_IR 100'
  ds.ImageType = ['ORIGINAL', 'PRIMARY']
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = sop_uid
  ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime('%Y%m%d')
  ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime('%H%M%S')
  ds.AccessionNumber = ''
  ds.Modality = modality
  ds.ConversionType = 'WSD'
  ds.ReferringPhysicianName = ''
  ds.SeriesDescription = 'view: PA'
  ds.PatientName = patient_id
  ds.PatientID = patient_id
  ds.PatientBirthDate = ''
  ds.PatientSex = 'O'
  ds.PatientAge = ''
  ds.BodyPartExamined = 'CHEST'
  ds.ViewPosition = 'PA'
  ds.StudyInstanceUID = generate_uid(_UID_ROOT, entropy_srcs=[sop_uid, 'st'])
  ds.SeriesInstanceUID = generate_uid(_UID_ROOT, entropy_srcs=[sop_uid, 'se'])
  ds.StudyID = ''
  ds.SeriesNumber = 1
  ds.InstanceNumber = 1
  ds.PatientOrientation = ''


def _set_image_tags(ds: Dataset, px: np.ndarray, photometric: str,
                    bits_stored: int, rescale: tuple[float, float]) -> None:
  """Image pixel module and Modality LUT tags for stored pixels `px`."""
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.Rows, ds.Columns = int(px.shape[0]), int(px.shape[1])
  spacing = round(430.0 / max(px.shape), 6)  # a 43 cm detector
  ds.PixelSpacing = [spacing, spacing]
  ds.BitsAllocated = 16
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = 0
  ds.RescaleIntercept = f'{float(rescale[1]):.6g}'
  ds.RescaleSlope = f'{float(rescale[0]):.6g}'
  ds.RescaleType = 'US'
  ds.LossyImageCompression = '00'


def write_dicom(path: str | os.PathLike, pixels_uint16: np.ndarray, *,
                photometric: str = 'MONOCHROME2', bits_stored: int = 12,
                rescale: tuple[float, float] = (1.0, 0.0),
                patient_id: str = '', sop_uid: str | None = None,
                extra: Mapping[str, Any] | None = None) -> None:
  """Writes a frontal chest CR (or DX, with extra={'Modality': 'DX'}) DICOM.

  Args:
    path: output file; parent folders are created.
    pixels_uint16: (H, W) stored values, all < 2**bits_stored.
    photometric: 'MONOCHROME2' (high = bright) or 'MONOCHROME1' (high = dark).
    bits_stored: 1..16 significant bits in each 16-bit word.
    rescale: (RescaleSlope, RescaleIntercept) of the Modality LUT.
    patient_id: PatientID (also used as PatientName).
    sop_uid: SOPInstanceUID; a fresh UID when None.
    extra: DICOM keyword -> value, set last (may override any tag, e.g.
      StudyInstanceUID, SeriesInstanceUID, WindowCenter, PixelSpacing).
  """
  px = _stored_pixels(path, pixels_uint16, photometric, bits_stored)
  extra = dict(extra or {})
  modality = str(extra.get('Modality', 'CR'))
  sop_uid = sop_uid or generate_uid(prefix=_UID_ROOT)
  sop_class = DX_SOP_CLASS if modality == 'DX' else CR_SOP_CLASS
  ds = Dataset()
  ds.file_meta = _file_meta(sop_class, sop_uid)
  _set_study_tags(ds, sop_class, sop_uid, modality, patient_id)
  _set_image_tags(ds, px, photometric, bits_stored, rescale)
  for keyword, value in extra.items():
    setattr(ds, keyword, value)
  ds.PixelData = px.tobytes()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  ds.save_as(os.fspath(path), enforce_file_format=True)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads .dcm (read_dicom) or PNG/JPEG (PIL) as float32 (H, W) in [0, 1]."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext in ('.dcm', '.dicom', ''):
    return read_dicom(path)
  if ext not in ('.png', '.jpg', '.jpeg'):
    raise ValueError(f'{path}: unsupported image extension {ext!r} '
                     '(expected .dcm, .png, .jpg, .jpeg)')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        arr = np.asarray(im, np.float64)
        wide = im.mode.startswith('I;16') or arr.max() > 255
        scale = 65535.0 if wide else 255.0
      else:
        arr = np.asarray(im.convert('L'), np.float64)
        scale = 255.0
  except Exception as e:
    raise ValueError(f'{path}: cannot read image ({e})') from e
  _check_not_blank(path, arr, f'{im.mode} pixels')
  return np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
