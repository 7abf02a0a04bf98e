"""Decimal numbers parsed from bytes with numpy, equal to Python's float().

A field `[+-]digits[.digits]` with at most 15 digits is m / 10**k, where the
integer m (below 10**15 < 2**53) and 10**k are exact doubles: IEEE division
rounds correctly, so the quotient is the correctly rounded value of the
decimal, which is what `float()` returns. m is accumulated by Horner's rule
over the field's bytes, every partial value an exact integer. Fields of any
other form are left to the caller (which uses `float()`).
"""
from __future__ import annotations

import numpy as np

_MAX_DIGITS = 15  # 10**15 < 2**53: the digits are an exact double
_POW10 = np.array([float(10 ** k) for k in range(_MAX_DIGITS + 1)])
_DOT, _PLUS, _MINUS = 46, 43, 45


def windows(buf: bytearray, start: np.ndarray, width: int) -> np.ndarray:
  """(N,) `S{width}`: the bytes from each start on (past a field's end they
  belong to the next fields; callers mask them)."""
  every = np.ndarray((len(buf) - width + 1,), f'S{width}', buffer=buf,
                     strides=(1,))  # the window at each byte, overlapping
  return every[start]


def parse(g: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Values of the fields `[+-]digits[.digits]` (<= 15 digits): row i of
  `g` (N, W) uint8 starts with field i, `length[i]` bytes long; also which
  fields have that form (the others' values are meaningless)."""
  n, width = g.shape
  g_T = np.ascontiguousarray(g.T)
  mant = np.zeros(n)
  n_digit, n_dot, frac = (np.zeros(n, np.int8) for _ in range(3))
  for j in range(width):
    inside = j < length
    d = g_T[j] - np.uint8(48)
    digit = (d <= 9) & inside
    np.multiply(mant, 10.0, out=mant, where=digit)
    np.add(mant, d, out=mant, where=digit)
    frac += digit & (n_dot > 0)
    n_digit += digit
    n_dot += (g_T[j] == _DOT) & inside
  sign = ((g_T[0] == _PLUS) | (g_T[0] == _MINUS)) & (length > 0)
  simple = ((n_digit >= 1) & (n_digit <= _MAX_DIGITS) & (n_dot <= 1)
            & (n_digit + n_dot + sign == length))
  value = mant / _POW10[np.minimum(frac, _MAX_DIGITS)]
  return np.where(g_T[0] == _MINUS, -value, value), simple
