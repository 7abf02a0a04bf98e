"""Vision Transformer (timm `vit_{small,base,large}_patch16_224` layout).

Variants (`VARIANTS`): 's16', 'b16', 'l16' and, for tests, 'tiny' (a 4x4
patch grid on any input size unless `img_size` is set).

The layout mirrors timm exactly so that `convert_torch` is a renaming:
patch-embedding conv -> prepend the class token -> add `pos_embed` (which has
an entry for the class token) -> pre-norm blocks (`norm1`, attention with
separate `query`/`key`/`value` kernels of shape (D, heads, head_dim) split
from timm's fused `qkv`, `proj`, `norm2`, MLP `fc1`-GELU(erf)-`fc2`) -> final
`norm` -> `head` on the class token. LayerNorm epsilon 1e-6.

Grad-CAM target (`out['features']`). The thesis says "output of the final
transformer block, patch tokens reshaped to the 14x14 grid". With a class
token head that activation carries no gradient: the final `norm` and the head
read only the class token, and the last block's output patch tokens are not
seen by anything after them, so Grad-CAM on it is identically zero. We
therefore follow pytorch-grad-cam's ViT recipe and target the *input* side of
the last block's attention: the patch tokens of `blocks[-1].norm1`'s output
(class token dropped), reshaped to the (gh, gw) patch grid. That grid is
registered with `self.perturb('features', ...)` and reshaped back into the
token sequence inside the block, so CAM gradients flow through the final
attention into the class token. The literal reading of the thesis is kept as
`out['block_out']` (the final block's output patch tokens on the grid) with
`full_last_block=True`; by default the last block computes its output for
the class token alone, the only row anything after it reads.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import math
import re
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import attention
from cxr_jax.models import layers
from cxr_jax.models import ops

Dtype = Any


@dataclasses.dataclass(frozen=True)
class _Cfg:
  dim: int
  depth: int
  heads: int
  patch: int | None  # None: derived from img_size (tiny: img_size // 4)
  img_size: int


VARIANTS = {
    's16': _Cfg(dim=384, depth=12, heads=6, patch=16, img_size=224),
    'b16': _Cfg(dim=768, depth=12, heads=12, patch=16, img_size=224),
    'l16': _Cfg(dim=1024, depth=24, heads=16, patch=16, img_size=224),
    'tiny': _Cfg(dim=32, depth=2, heads=2, patch=None, img_size=32),
}
LN_EPS = 1e-6


def _cfg(variant: str) -> _Cfg:
  return layers.variant_spec('ViT', VARIANTS, variant)


def grid_to_tokens(x_BHWD: jax.Array) -> jax.Array:
  """(B, gh, gw, D) -> (B, gh*gw, D), row-major: cell (r, c) -> token r*gw+c."""
  b, h, w, d = x_BHWD.shape
  return x_BHWD.reshape(b, h * w, d)


def tokens_to_grid(x_BND: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """(B, gh*gw, D) -> (B, gh, gw, D); token i lands at (i // gw, i % gw)."""
  b, n, d = x_BND.shape
  if n != grid[0] * grid[1]:
    raise ValueError(f'{n} tokens do not fill a {grid} grid')
  return x_BND.reshape(b, grid[0], grid[1], d)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not train or self.rate == 0.:
      return x
    keep = 1. - self.rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.).astype(x.dtype)


class PatchEmbed(nn.Module):
  """timm's patch-embedding conv (kernel = stride = patch) as one matmul.

  Same parameters as `nn.Conv(dim, (p, p), strides=(p, p), padding='VALID')`
  (kernel (p, p, C, dim), lecun-normal; zero bias), applied to the
  non-overlapping patches flattened in (row, col, channel) order, which is
  what that conv computes. Forward and kernel gradient are then plain GEMMs
  on every backend, and the ViT has no convolution left for a backend's
  convolution kernels to slow down. Returns (B, gh*gw, dim) tokens,
  row-major over the patch grid.
  """
  dim: int
  patch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    b, h, w, c = x_BHWC.shape
    p = self.patch
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (p, p, c, self.dim), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.dim,), jnp.float32)
    x = x_BHWC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x_BNP = x.reshape(b, (h // p) * (w // p), p * p * c)
    k_PD = kernel.reshape(p * p * c, self.dim).astype(self.dtype)
    return x_BNP @ k_PD + bias.astype(self.dtype)[None, None]


class Mlp(nn.Module):
  """fc1 -> GELU (exact, erf; tanh form if `gelu_approximate`) -> fc2, as
  timm's `Mlp`."""
  hidden: int
  dropout_rate: float = 0.
  dtype: Dtype = jnp.float32
  gelu_approximate: bool = False
  lean: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    shape = x.shape
    x = layers.rows(x)
    x = nn.Dense(self.hidden, dtype=self.dtype, name='fc1')(x)
    x = ops.gelu(x, approximate=self.gelu_approximate, lean=self.lean)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(shape[-1], dtype=self.dtype, name='fc2')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return x.reshape(shape)


class Block(nn.Module):
  """Pre-norm transformer block; `norm1_hook` edits the norm1 output;
  `queries=q` computes the block's output for the first q tokens only."""
  heads: int
  mlp_ratio: float = 4.
  dropout_rate: float = 0.
  attn_dropout_rate: float = 0.
  drop_path_rate: float = 0.
  dtype: Dtype = jnp.float32
  return_attn: bool = False
  attn_implementation: str | None = 'auto'
  gelu_approximate: bool = False
  memory_lean: bool = True

  @nn.compact
  def __call__(self, x_BND: jax.Array, *, train: bool,
               norm1_hook: Callable[[jax.Array], jax.Array] | None = None,
               queries: int | None = None, length: int | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    """`length`: tokens past it are padding (see `attention.Attention`)."""
    d = x_BND.shape[-1]
    lean = self.memory_lean
    y = ops.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, lean=lean,
                      name='norm1')(x_BND)
    if norm1_hook is not None:
      y = norm1_hook(y)
    y, attn_BHNN = attention.Attention(
        self.heads, self.attn_dropout_rate, self.dropout_rate, self.dtype,
        return_weights=self.return_attn,
        implementation=self.attn_implementation, name='attn')(
            y, train=train, queries=queries, length=length)
    if queries is not None:
      x_BND = x_BND[:, :queries]
    x_BND = x_BND + DropPath(self.drop_path_rate)(y, train=train)
    y = ops.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, lean=lean,
                      name='norm2')(x_BND)
    y = Mlp(int(d * self.mlp_ratio), self.dropout_rate, self.dtype,
            self.gelu_approximate, lean, name='mlp')(y, train=train)
    x_BND = x_BND + DropPath(self.drop_path_rate)(y, train=train)
    return x_BND, attn_BHNN


class Model(layers.Classifier):
  """timm-compatible ViT classifier returning `(logits, out)`.

  Attributes (beyond `layers.Classifier`'s; `num_classes` 0 is no head too):
    variant: 's16', 'b16', 'l16' or 'tiny'.
    img_size: square input size the position embedding is built for; None =
      the variant's 224 ('tiny': the input's own size). The patch grid is
      img_size // patch; converted 224 weights need 224 inputs.
    patch_size: None = the variant's (16; 'tiny': img_size // 4).
    dropout_rate, attn_dropout_rate, drop_path_rate: timm's `drop_rate`,
      `attn_drop_rate`, `drop_path_rate` (linearly increasing over depth).
    return_attn: also return every block's attention probabilities in
      `out['attn']` (list of (B, heads, N, N), N = 1 + gh*gw), for rollout.
    attn_implementation: None = the attention written out in a heads-major
      layout (fastest on CPU); 'xla' or 'cudnn' = `jax.nn.dot_product_attention`
      with that implementation (cuDNN's fused attention on GPUs), used when
      `return_attn` is off; 'auto' (default) = 'cudnn' on a GPU in bf16/fp16,
      else None.
    full_last_block: run the last block's attention output, MLP and residual
      for every token and return them as `out['block_out']`. Off (default),
      they run for the class token only, the one the final norm and the head
      read: the same logits, features and gradients for ~7% fewer FLOPs
      (ViT-B/16; on for `return_attn`, which needs every query's row).
    gelu_approximate: the MLP's GELU in its tanh form (as big_vision's ViT;
      XLA can fuse it into a cuBLAS epilogue on GPUs) instead of timm's exact
      erf form. Off by default: converted timm weights expect erf.
    pos_embed_grad: how the position embedding's gradient is formed
      (`ops.add_over_batch`): 'auto' (default) = a (1, B) @ (B, N*D) product
      off the CPU, which keeps XLA's GPU layouts row-major; 'sum' =
      autodiff's batch sum, 'matmul' = the product always.
    memory_lean: forms that cut the memory traffic of the step off the CPU,
      same math (default on; off = the plain forms, for comparisons):
      LayerNorm's backward pass reads stored statistics and GELU's
      recomputes its derivative (`ops.LayerNorm`, `ops.gelu`), and on the
      fused attention path the sequence is padded once, after the
      embedding, to a multiple of `seq_multiple` (padding masked as keys,
      dropped before the last block) instead of padded and sliced in every
      block.
    seq_multiple: the multiple `memory_lean` pads the sequence to on the
      fused path; None = 8 for cuDNN (its fused attention rejects odd
      lengths when training), else 1 (no padding).
  """
  family: ClassVar[str] = 'ViT'
  variants: ClassVar[Mapping[str, Any]] = VARIANTS
  variant: str = 'b16'
  img_size: int | None = None
  patch_size: int | None = None
  dropout_rate: float = 0.
  attn_dropout_rate: float = 0.
  drop_path_rate: float = 0.
  return_attn: bool = False
  attn_implementation: str | None = 'auto'
  gelu_approximate: bool = False
  full_last_block: bool = False
  pos_embed_grad: str = 'auto'
  memory_lean: bool = True
  seq_multiple: int | None = None

  def geometry(self, hw: tuple[int, int] | None = None
               ) -> tuple[tuple[int, int], int, tuple[int, int]]:
    """Returns ((H, W) built for, patch size, (gh, gw) patch grid).

    `hw` (the input's size) is used only by 'tiny' with `img_size=None`,
    which adapts to its input (patch = H // 4, so a 4x4 grid at 32 or 64 px).
    """
    cfg = _cfg(self.variant)
    if self.img_size:
      img = (self.img_size, self.img_size)
    elif cfg.patch is None and hw is not None:
      img = (int(hw[0]), int(hw[1]))
    else:
      img = (cfg.img_size, cfg.img_size)
    patch = self.patch_size or cfg.patch or max(1, img[0] // 4)
    if img[0] % patch or img[1] % patch:
      raise ValueError(f'img_size {img} is not a multiple of patch {patch}')
    return img, patch, (img[0] // patch, img[1] // patch)

  def _sequence_padding(self, n: int, train: bool) -> int:
    """Tokens `memory_lean` appends once after the embedding: up to a
    multiple of `seq_multiple`, when every block but the last takes the
    fused attention path (which can mask them as keys)."""
    if self.seq_multiple is not None and self.seq_multiple < 1:
      raise ValueError(f'seq_multiple {self.seq_multiple}: expected None or '
                       'a positive token count')
    multiple = self.seq_multiple or attention.required_seq_multiple(
        attention.resolve_attn_implementation(self.attn_implementation,
                                              self.dtype))
    probe = attention.Attention(
        _cfg(self.variant).heads, self.attn_dropout_rate,
        return_weights=self.return_attn,
        implementation=self.attn_implementation, dtype=self.dtype,
        parent=None)
    if not (self.memory_lean and probe.fused(train)):
      return 0
    return -n % multiple

  def _embed(self, x_BHWC: jax.Array, train: bool
             ) -> tuple[jax.Array, tuple[int, int]]:
    """Patch tokens with the class token prepended and `pos_embed` added:
    (B, 1 + gh*gw, D), and the patch grid (gh, gw)."""
    cfg = self.spec(x_BHWC)
    img, patch, (gh, gw) = self.geometry(x_BHWC.shape[1:3])
    if tuple(x_BHWC.shape[1:3]) != img:
      raise ValueError(f'ViT built for {img} inputs (field img_size), '
                       f'got {x_BHWC.shape[1:3]}')
    b = x_BHWC.shape[0]
    x_BND = PatchEmbed(cfg.dim, patch, dtype=self.dtype, name='patch_embed')(
        x_BHWC.astype(self.dtype))
    cls = self.param('cls_token', nn.initializers.normal(1e-6),
                     (1, 1, cfg.dim), jnp.float32)
    pos = self.param('pos_embed', nn.initializers.normal(0.02),
                     (1, gh * gw + 1, cfg.dim), jnp.float32)
    x_BND = jnp.concatenate(
        [jnp.broadcast_to(cls.astype(self.dtype), (b, 1, cfg.dim)), x_BND], 1)
    x_BND = ops.add_over_batch(x_BND, pos, grad=self.pos_embed_grad)
    x_BND = nn.Dropout(self.dropout_rate)(x_BND, deterministic=not train)
    return x_BND, (gh, gw)

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    cfg = _cfg(self.variant)
    out: dict[str, Any] = {}
    x_BND, (gh, gw) = self._embed(x_BHWC, train)

    def features_hook(y_BND: jax.Array) -> jax.Array:
      grid = tokens_to_grid(y_BND[:, 1:], (gh, gw))
      grid = self.perturb('features', grid)
      out['features'] = grid
      return jnp.concatenate([y_BND[:, :1], grid_to_tokens(grid)], 1)

    full = self.full_last_block or self.return_attn
    n = x_BND.shape[1]
    pad = self._sequence_padding(n, train)
    if pad:  # padded once here, dropped before the last block
      x_BND = jnp.pad(x_BND, ((0, 0), (0, pad), (0, 0)))
    dpr = np.linspace(0., self.drop_path_rate, cfg.depth)
    attns = []
    for i in range(cfg.depth):
      last = i == cfg.depth - 1
      x_BND, attn = Block(
          cfg.heads, dropout_rate=self.dropout_rate,
          attn_dropout_rate=self.attn_dropout_rate,
          drop_path_rate=float(dpr[i]), dtype=self.dtype,
          return_attn=self.return_attn,
          attn_implementation=self.attn_implementation,
          gelu_approximate=self.gelu_approximate,
          memory_lean=self.memory_lean, name=f'blocks_{i}')(
              x_BND[:, :n] if last and pad else x_BND, train=train,
              norm1_hook=features_hook if last else None,
              queries=1 if last and not full else None,
              length=n if pad and not last else None)
      attns.append(attn)
    if full:
      out['block_out'] = tokens_to_grid(x_BND[:, 1:], (gh, gw))
    if self.return_attn:
      out['attn'] = attns
    x_BND = ops.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='norm')(x_BND)
    out['pre_logits'] = pre = x_BND[:, 0]
    if not self.num_classes:
      return pre, out
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(pre), out


def _split_qkv(state_dict: Mapping[str, Any], heads: int) -> dict[str, Any]:
  """timm's fused `attn.qkv` weight (3D, D) and bias (3D,) -> separate
  `attn.{query,key,value}.{kernel,bias}` in Flax's (D, heads, head_dim) and
  (heads, head_dim) layout; other keys pass through."""
  sd = dict(state_dict)
  for key in [k for k in sd if re.search(r'attn\.qkv\.(weight|bias)$', k)]:
    arr = layers.to_numpy(sd.pop(key))
    if arr.shape[0] % (3 * heads):
      raise ValueError(f'{key}: shape {arr.shape} does not split into '
                       f'query, key and value of {heads} heads')
    arr = arr.reshape(3, heads, -1, *arr.shape[1:])
    leaf = 'kernel' if key.endswith('weight') else 'bias'
    if leaf == 'kernel':  # (3, heads, hd, D) -> (3, D, heads, hd)
      arr = arr.transpose(0, 3, 1, 2)
    base = key.rsplit('qkv.', 1)[0]
    for part, a in zip(('query', 'key', 'value'), arr):
      sd[f'{base}{part}.{leaf}'] = np.ascontiguousarray(a)
  return sd


def _rename(module: str) -> str:
  """timm module path -> Flax path (`blocks.3.attn` -> `blocks_3/attn`)."""
  if module == 'patch_embed.proj':
    return 'patch_embed'
  return re.sub(r'^blocks\.(\d+)', r'blocks_\1', module).replace('.', '/')


def convert_torch(state_dict: Mapping[str, np.ndarray], *,
                  variant: str) -> dict[str, Any]:
  """timm ViT state dict -> {'params': ...} for `Model(variant=variant)`.

  The head is converted when present (any size); the patch size and grid
  come from `patch_embed.proj.weight` and `pos_embed`. Mismatches raise as
  `layers.torch_to_flax` says.
  """
  cfg = _cfg(variant)
  num_classes, in_chans = layers.head_and_channels(
      state_dict, 'head.weight', 'patch_embed.proj.weight')
  if 'pos_embed' not in state_dict:
    raise KeyError("torch state dict has no 'pos_embed': not a timm ViT?")
  patch = int(state_dict['patch_embed.proj.weight'].shape[-1])
  grid = math.isqrt(int(state_dict['pos_embed'].shape[1]) - 1)
  model = Model(num_classes, variant=variant, in_chans=in_chans,
                img_size=grid * patch, patch_size=patch)
  return layers.torch_to_flax(
      _split_qkv(state_dict, cfg.heads), _rename, model,
      jnp.zeros((1, grid * patch, grid * patch, in_chans), jnp.float32))
