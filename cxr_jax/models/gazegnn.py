"""GazeGNN (Wang et al. 2023): a Vision GNN whose nodes carry the gaze map.

GazeGNN ("GazeGNN: A Gaze-Guided Graph Neural Network for Chest X-ray
Classification", arXiv 2305.18221) builds one graph from image patches and the
radiologist's gaze: every patch node gets its image embedding plus a position
embedding plus a *gaze embedding* (the gaze heatmap aggregated over the
patch, min-max normalised per image, passed through a one-channel BatchNorm and
added to every channel). The graph network is Vision GNN (ViG, Han et al.
2022): Grapher blocks (1x1 conv-BN, dynamic k-NN graph in feature space,
max-relative graph conv, 1x1 conv-BN, residual) each followed by an FFN
(1x1 conv-BN-GELU-1x1 conv-BN, residual), then global average pooling and a
1x1 conv head (C -> 1024 -> BN -> GELU -> dropout -> classes).

What this module does as the authors' code does (read from their release):
  * gaze embedding = BatchNorm2d(1) of the patch-aggregated, min-max normalised
    gaze map, broadcast-added to the stem output together with `pos_embed`
    (learned, zero-initialised);
  * k-NN on L2-normalised node features, squared Euclidean distance, the node
    itself included, dilation d = min(block // 4 + 1, N // k) taking every d-th
    of the k*d nearest; constant k over the blocks (GazeGNN's choice);
  * MRConv: [x_i, max_j(x_j - x_i)] interleaved channel-wise, 1x1 conv with 4
    groups to 2C, BN, GELU (exact erf GELU, like torch's nn.GELU);
  * the head on the pooled vector; BatchNorm = `layers.BatchNorm` (torch-exact
    running statistics), eps 1e-5, momentum 0.9 (= torch 0.1).

Where we simplify (documented choices, not the paper's):
  * Isotropic ViG instead of the authors' pyramid ViG-Ti (4 stages with
    downsampling, relative position bias in the k-NN distance, and spatial
    reduction of the neighbour set). One resolution, no relative position
    term: this is ViG's isotropic model. 'full' = 12 blocks, width 192,
    k = 9, patch 16 (ViG-Ti isotropic); 'tiny' = 2 blocks, width 32, k = 4,
    patch 8.
  * The gaze map is aggregated by a non-overlapping patch average; the
    authors sum 14x14 windows at stride 4 (overlapping by 3 px on each side)
    in their data loader. The gaze *recipe* (fixation durations, log) belongs
    to the data pipeline, not here: the model takes any (B, H, W) map.
  * No stochastic depth (the authors' drop_path is 0 too) and no stochastic
    k-NN (off in theirs).
  * `pos_embed` takes its grid from the input at `init`; a checkpoint fits
    only that grid (the authors train at one size too).

`convert_torch` maps Huawei's isotropic ViG state dict (`stem.convs.*`,
`pos_embed`, `backbone.i.0` Grapher, `backbone.i.1` FFN, `prediction.*`),
optionally with GazeGNN's gaze BatchNorm `b1.*`, onto this tree (the Flax
module names mirror those keys), e.g. to start from ImageNet ViG weights.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import layers
from cxr_jax.models import ops

# variant -> (depth, width, k, patch, head hidden width)
VARIANTS = {
    'full': (12, 192, 9, 16, 1024),
    'tiny': (2, 32, 4, 8, 64),
}


def _bn(train: bool, dtype: Any, name: str) -> nn.Module:
  return layers.BatchNorm(use_running_average=not train, momentum=0.9,
                   epsilon=1e-5, dtype=dtype, name=name)


def knn_graph(x_BNC: jax.Array, k: int, dilation: int = 1) -> jax.Array:
  """Dilated k-NN in feature space, as ViG's `DenseDilatedKnnGraph`.

  Features are L2-normalised over channels; neighbours are ranked by squared
  Euclidean distance (the node itself, at distance 0, is included). Returns
  (B, N, k) int32 neighbour indices: every `dilation`-th of the k*dilation
  nearest, nearest first.
  """
  n = x_BNC.shape[1]
  if k * dilation > n:
    raise ValueError(f'k-NN with k={k}, dilation={dilation} needs at least '
                     f'{k * dilation} nodes, the graph has {n}.')
  x = jax.lax.stop_gradient(x_BNC).astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  sq_BN = jnp.sum(x * x, axis=-1)
  inner_BNN = jnp.einsum('bnc,bmc->bnm', x, x)
  dist_BNN = sq_BN[:, :, None] - 2 * inner_BNN + sq_BN[:, None, :]
  _, idx_BNK = jax.lax.top_k(-dist_BNN, k * dilation)
  return idx_BNK[:, :, ::dilation]


class Conv1x1BN(nn.Module):
  """torch `Sequential(Conv2d 1x1 (bias), BatchNorm2d)`: children '0', '1'."""
  features: int
  groups: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x = ops.Conv(self.features, (1, 1), feature_group_count=self.groups,
                 dtype=self.dtype, name='0')(x_BHWC)
    return _bn(train, self.dtype, '1')(x)


class MRConv(nn.Module):
  """Max-relative graph conv; the torch path is `graph_conv.gconv.nn`."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, idx_BNK: jax.Array,
               train: bool) -> jax.Array:
    b, h, w, c = x_BHWC.shape
    x_BNC = x_BHWC.reshape(b, h * w, c)
    xj_BNKC = jax.vmap(lambda xs, ids: xs[ids])(x_BNC, idx_BNK)
    rel_BNC = jnp.max(xj_BNKC - x_BNC[:, :, None, :], axis=2)
    # torch: cat([x, rel], dim=2).reshape(B, 2C, N): channels interleaved.
    y = jnp.stack([x_BNC, rel_BNC], axis=-1).reshape(b, h, w, 2 * c)
    y = Conv1x1BN(self.features, groups=4, dtype=self.dtype, name='nn')(
        y, train)
    return ops.gelu(y)


class GraphConv(nn.Module):
  """ViG's `DyGraphConv2d`: the dynamic k-NN graph of its input, then
  MRConv (held under torch's name `gconv`)."""
  features: int
  k: int
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    b, h, w, c = x_BHWC.shape
    idx_BNK = knn_graph(x_BHWC.reshape(b, h * w, c), self.k, self.dilation)
    return MRConv(self.features, dtype=self.dtype, name='gconv')(
        x_BHWC, idx_BNK, train)


class Grapher(nn.Module):
  """ViG Grapher: fc1 -> dynamic k-NN graph conv (C -> 2C) -> fc2 + input."""
  k: int
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
    c = x_BHWC.shape[-1]
    y = Conv1x1BN(c, dtype=self.dtype, name='fc1')(x_BHWC, train)
    y = GraphConv(2 * c, self.k, self.dilation, dtype=self.dtype,
                  name='graph_conv')(y, train)
    y = Conv1x1BN(c, dtype=self.dtype, name='fc2')(y, train)
    return y + x_BHWC


class FFN(nn.Module):
  """1x1 conv-BN (C -> 4C), GELU, 1x1 conv-BN (4C -> C), residual."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    y = ops.gelu(Conv1x1BN(self.hidden, dtype=self.dtype, name='fc1')(
        x_BHWC, train))
    return Conv1x1BN(x_BHWC.shape[-1], dtype=self.dtype, name='fc2')(
        y, train) + x_BHWC


class Block(nn.Module):
  """torch `Sequential(Grapher, FFN)`: children '0', '1'."""
  k: int
  dilation: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x = Grapher(self.k, self.dilation, dtype=self.dtype, name='0')(
        x_BHWC, train)
    return FFN(4 * x.shape[-1], dtype=self.dtype, name='1')(x, train)


class Model(layers.Classifier):
  """GazeGNN on isotropic ViG.

  Attributes (beyond `layers.Classifier`'s):
    variant: key of `VARIANTS` ('full' or 'tiny').
    gaze_minmax: min-max normalise the patch-aggregated gaze per image (the
      authors' loader does; off = use the map's own scale).
    drop_rate: dropout in the head in training (the authors use 0).

  `__call__(x_BHWC, *, train=False, gaze=gaze_BHW)` returns (logits, out) with
  out['features'] (B, H/p, W/p, C) = the last block's node features on the
  patch grid (perturbed; the Grad-CAM target), out['pre_logits'] (B, C) and
  out['gaze_embed'] (B, H/p, W/p, 1) = the gaze term added to every node.
  """
  family: ClassVar[str] = 'GazeGNN'
  variants: ClassVar[Mapping[str, Any]] = VARIANTS
  variant: str = 'full'
  gaze_minmax: bool = True
  drop_rate: float = 0.0

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False,
               gaze: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    depth, dim, k, patch, hidden = self.spec(x_BHWC)
    if gaze is None:
      raise ValueError('GazeGNN needs the gaze map: call model.apply(variables,'
                       ' x_BHWC, gaze=gaze_BHW) with gaze of shape (B, H, W).')
    b, hh, ww, _ = x_BHWC.shape
    gaze_BHW1 = gaze.reshape(gaze.shape[:3] + (1,)) if gaze.ndim == 4 else (
        gaze[..., None])
    if gaze_BHW1.shape != (b, hh, ww, 1):
      raise ValueError(f'gaze must be (B, H, W) = {(b, hh, ww)} like the image'
                       f', got {gaze.shape}.')
    if hh % patch or ww % patch:
      raise ValueError(f'GazeGNN needs H, W divisible by the patch size {patch}'
                       f', got {(hh, ww)}.')
    out = {}
    x = Stem(dim, int(math.log2(patch)), dtype=self.dtype, name='stem')(
        jnp.asarray(x_BHWC, self.dtype), train)
    h, w = hh // patch, ww // patch
    pos = self.param('pos_embed', nn.initializers.zeros, (1, h, w, dim),
                     jnp.float32)
    g = nn.avg_pool(jnp.asarray(gaze_BHW1, jnp.float32), (patch, patch),
                    strides=(patch, patch))
    if self.gaze_minmax:
      lo = jnp.min(g, axis=(1, 2, 3), keepdims=True)
      rng = jnp.max(g, axis=(1, 2, 3), keepdims=True) - lo
      g = jnp.where(rng > 0, (g - lo) / jnp.where(rng > 0, rng, 1.0), g)
    g = _bn(train, self.dtype, 'b1')(g.astype(self.dtype))
    x = x + pos.astype(self.dtype) + g
    out['gaze_embed'] = g
    n = h * w
    if k > n:
      raise ValueError(f'GazeGNN k={k} exceeds the {n} patch nodes of a '
                       f'{(hh, ww)} input.')
    for i in range(depth):
      dilation = min(i // 4 + 1, max(1, n // k))
      x = Block(k, dilation, dtype=self.dtype, name=f'backbone_{i}')(x, train)
    x = self.perturb('features', x)
    out['features'] = x
    pooled = jnp.mean(x, axis=(1, 2))
    out['pre_logits'] = pooled
    if self.num_classes is None:
      return pooled, out
    y = ops.Conv(hidden, (1, 1), dtype=self.dtype, name='prediction_0')(
        pooled[:, None, None, :])
    y = ops.gelu(_bn(train, self.dtype, 'prediction_1')(y))
    if self.drop_rate:
      y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    y = ops.Conv(self.num_classes, (1, 1), dtype=self.dtype,
                 name='prediction_4')(y)
    return y[:, 0, 0, :], out


class Stem(nn.Module):
  """ViG isotropic stem: `n_down` (conv3x3/2-BN-GELU) then conv3x3-BN.

  Children are named by their torch `stem.convs` index (conv 3i, BN 3i+1).
  """
  dim: int
  n_down: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    x = x_BHWC
    for i in range(self.n_down + 1):
      last = i == self.n_down
      width = self.dim if last else self.dim // 2 ** (self.n_down - 1 - i)
      x = ops.Conv(width, (3, 3), strides=1 if last else 2,
                   padding=((1, 1), (1, 1)), dtype=self.dtype,
                   name=str(3 * i))(x)
      x = _bn(train, self.dtype, str(3 * i + 1))(x)
      if not last:
        x = ops.gelu(x)
    return x


def _rename(module: str) -> str:
  """torch module path -> Flax path (`backbone.3.0` -> `backbone_3/0`)."""
  parts = module.split('.')
  if parts[0] in ('backbone', 'prediction') and len(parts) > 1:
    parts = [f'{parts[0]}_{parts[1]}'] + parts[2:]
  elif parts[:1] == ['stem'] and parts[1:2] == ['convs']:
    parts = ['stem'] + parts[2:]
  return '/'.join(parts)


def convert_torch(state_dict: Mapping[str, Any], *, variant: str = 'full'
                  ) -> dict[str, dict[str, Any]]:
  """Isotropic ViG (+ optional GazeGNN `b1`) state dict -> Flax variables.

  The `pos_embed` (1, C, h, w) sets the grid: the returned tree fits a model
  initialised on (h * patch, w * patch) inputs. Without `b1.*` keys the gaze
  BatchNorm keeps its initial values (scale 1, bias 0, mean 0, var 1); without
  `prediction.4.*` the tree is headless. Mismatches raise as
  `layers.torch_to_flax` says.
  """
  if 'pos_embed' not in state_dict:
    raise KeyError("torch state dict has no 'pos_embed': not a ViG "
                   'checkpoint?')
  num_classes, in_chans = layers.head_and_channels(
      state_dict, 'prediction.4.weight', 'stem.convs.0.weight')
  sd = dict(state_dict)
  sd['pos_embed'] = layers.to_numpy(sd['pos_embed']).transpose(0, 2, 3, 1)
  if 'b1.weight' not in sd:
    sd.update({'b1.weight': np.ones(1, np.float32),
               'b1.bias': np.zeros(1, np.float32),
               'b1.running_mean': np.zeros(1, np.float32),
               'b1.running_var': np.ones(1, np.float32)})
  _, gh, gw, _ = sd['pos_embed'].shape
  patch = layers.variant_spec('GazeGNN', VARIANTS, variant)[3]
  model = Model(num_classes, variant=variant, in_chans=in_chans)
  x = jnp.zeros((1, gh * patch, gw * patch, in_chans), jnp.float32)
  return layers.torch_to_flax(sd, _rename, model, x, gaze=x[..., 0])
