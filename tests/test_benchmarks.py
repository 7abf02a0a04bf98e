"""Smoke test of the benchmark suite on tiny models (structure + correctness).

No timing assertions: the rates only have to be positive and the ratio has
to be JAX / torch. The Grad-CAM agreement is a real check: our `raw` maps and
pytorch-grad-cam's, on the same converted weights, correlate >= 0.999.
"""
import jax
import jax.numpy as jnp
import pytest

pytest.importorskip('torch')
pytest.importorskip('timm')
pytest.importorskip('pytorch_grad_cam')

from benchmarks import flops  # pylint: disable=g-import-not-at-top
from benchmarks import gradcam  # pylint: disable=g-import-not-at-top
from benchmarks import run  # pylint: disable=g-import-not-at-top
from benchmarks import train_step  # pylint: disable=g-import-not-at-top
from cxr_jax.runtime import xla_flags  # pylint: disable=g-import-not-at-top


def test_train_step_row():
  row = train_step.bench_classifier('resnet_tiny', batch=2, size=32, steps=1,
                                    warmup=1, num_classes=3)
  for k in ('model', 'jax_images_per_s', 'torch_images_per_s', 'ratio',
            'jax_step_s', 'torch_step_s', 'jax_compile_s', 'flops_per_step'):
    assert k in row, k
  assert row['jax_images_per_s'] > 0 and row['torch_images_per_s'] > 0
  assert row['ratio'] == pytest.approx(
      row['jax_images_per_s'] / row['torch_images_per_s'])
  assert row['flops_per_step'] > 0


def test_stage2_step_is_the_trainers_with_frozen_backward_skipped():
  """The benchmark times the step `cxr_jax.train.run` trains with: built
  with the schedule's labels, so the frozen DenseNet's backward pass is
  skipped (fewer convolutions than in a step built without them)."""
  from cxr_jax import optim  # pylint: disable=g-import-not-at-top
  from cxr_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  config = train_step.stage2_config(demo=True, batch=2)
  seen = {}

  def spy(config, model, tx, labels):
    seen.update(model=model, tx=tx, labels=labels)
    return step_lib.make_train_step(config, model, tx, labels)

  js = train_step.build_jax_step(config, train_step.stage2_batch(config, 2),
                                 make_step=spy)
  assert optim.FROZEN in jax.tree.leaves(seen['labels'])

  def convolutions(labels):
    step = step_lib.make_train_step(config, seen['model'], seen['tx'],
                                    labels)
    return str(jax.make_jaxpr(step)(js.state, js.batch)).count(
        'conv_general_dilated')
  assert convolutions(seen['labels']) < convolutions(None)


@pytest.mark.parametrize('name,size', [('resnet_tiny', 64), ('vit_tiny', 32)])
def test_gradcam_matches_pytorch_grad_cam(name, size):
  row = gradcam.bench_gradcam(name, batch=2, size=size, steps=1, warmup=1,
                              num_classes=3)
  assert row['jax_images_per_s'] > 0 and row['torch_images_per_s'] > 0
  assert row['ratio'] == pytest.approx(
      row['jax_images_per_s'] / row['torch_images_per_s'])
  assert row['raw_corr'] >= 0.999, row
  assert row['cam_corr'] >= 0.99, row


def test_isolated_rows_time_each_side_in_its_own_processes():
  """--isolate (the CPU default): train and Grad-CAM timings come from one
  subprocess per side and round; the rows keep their fields, and the
  Grad-CAM agreement is still checked in this process."""
  row = train_step.bench_classifier('resnet_tiny', batch=2, size=32, steps=2,
                                    warmup=1, num_classes=3, isolate=True,
                                    rounds=1)
  assert row['isolated'] and row['jax_step_s'] > 0 and row['torch_step_s'] > 0
  assert row['flops_per_step'] > 0 and row['jax_compile_s'] > 0
  row = gradcam.bench_gradcam('vit_tiny', batch=2, size=32, steps=2, warmup=1,
                              num_classes=3, isolate=True, rounds=1)
  assert row['isolated'] and row['jax_s'] > 0 and row['torch_s'] > 0
  assert row['raw_corr'] >= 0.999, row
  from benchmarks import alternating  # pylint: disable=g-import-not-at-top
  with pytest.raises(RuntimeError, match='failed'):
    alternating.run_alternating('train', rounds=1, steps=1, warmup=0,
                             model='no_such_model', batch=1, size=32)


def test_vgg_target_layer_is_last_relu():
  tm = train_step.torch_model('vgg16')
  layer, reshape = gradcam.torch_target_layer('vgg16', tm)
  assert layer is tm.features[29] and reshape is None
  assert type(layer).__name__ == 'ReLU'
  assert type(tm.features[28]).__name__ == 'Conv2d'


def test_flops_and_report():
  a = jnp.ones((64, 64), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, a).compile()
  assert flops.compiled_flops(compiled) == pytest.approx(2 * 64**3, rel=0.01)
  peak = flops.matmul_peak(64, reps=2)
  assert peak['flops_per_s'] > 0
  assert flops.published_peak('NVIDIA H200', 'bfloat16') == 989e12
  assert flops.published_peak('cpu', 'float32') is None
  assert flops.utilisation(1e9, 0.5, 4e9) == pytest.approx(50.0)
  res = dict(machine=dict(device='cpu', cpu_count=2, load_avg_start=1.0,
                          time_utc='now'),
             config=dict(dtype='float32',
                         tune_host_malloc=dict(jax=True, torch=False)),
             load_avg_end=1.0,
             train=[dict(model='m', batch=2, size=32, jax_images_per_s=2.0,
                         torch_images_per_s=1.0, ratio=2.0, jax_step_s=1.0,
                         flops_per_step=None)])
  md = run.report(res)
  assert '| m | 2 | 32 | 2 | 1 | 2 |' in md
  assert 'main.py --tune_host_malloc, off by default there): sides jax.' in md


def test_cpu_xla_flags_keep_what_the_user_set():
  extra = xla_flags.CPU_XLA_FLAGS
  name = extra.split('=', 1)[0]
  assert xla_flags.merge('', extra) == extra
  assert xla_flags.merge('--a=1', extra) == f'--a=1 {extra}'
  mine = f'{name}= --a=1'  # the user's own setting of the same flag wins
  assert xla_flags.merge(mine, extra) == mine


def test_xla_ab_variant_parsing():
  from benchmarks import xla_ab  # pylint: disable=g-import-not-at-top
  t = 'LIBRARY_FUSION_TYPE_'
  assert xla_ab.parse_variant('default:') == ('default', {})
  assert xla_ab.parse_variant(
      f'y:xla_cpu_use_onednn=true,xla_cpu_experimental_ynn_fusion_type='
      f'{t}REDUCE,{t}INDIVIDUAL_DOT') == ('y', {
          'xla_cpu_use_onednn': True,
          'xla_cpu_experimental_ynn_fusion_type':
              f'{t}REDUCE,{t}INDIVIDUAL_DOT'})


def test_xla_ab_split_options():
  from benchmarks import xla_ab  # pylint: disable=g-import-not-at-top
  _, opts = xla_ab.parse_variant(
      'v:model.attn_implementation=cudnn,batch=256,model.gelu_approximate='
      'true,model.drop_path_rate=0.1,xla_gpu_autotune_level=0')
  assert xla_ab.split_options(opts, 128) == (
      256, {'attn_implementation': 'cudnn', 'gelu_approximate': True,
            'drop_path_rate': 0.1}, {'xla_gpu_autotune_level': 0})
  assert xla_ab.split_options({}, 128) == (128, {}, {})


def test_jaxpr_flops_closed_forms_and_xla_agreement():
  """The jaxpr FLOP counter (used where the backend has no cost model):
  2*M*N*K for a matmul (= XLA's count), 2 * outputs * window * in-channels
  for a convolution, a scan body times its length, and a gradient program
  counted through its transposed products."""
  from benchmarks import flops  # pylint: disable=g-import-not-at-top
  a, b = jnp.ones((8, 32)), jnp.ones((32, 16))
  mm = lambda a, b: a @ b
  assert flops.jaxpr_flops(mm, a, b) == 2 * 8 * 16 * 32
  assert flops.compiled_flops(jax.jit(mm).lower(a, b)) == 2 * 8 * 16 * 32
  x, w = jnp.ones((2, 10, 10, 3)), jnp.ones((3, 3, 3, 4))
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert flops.jaxpr_flops(conv, x, w) == 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)
  scan = lambda a, b: jax.lax.scan(lambda c, _: (c, c @ b), a, None,
                                   length=5)[1]
  assert flops.jaxpr_flops(scan, a, b) == 5 * 2 * 8 * 16 * 32
  # value + both gradients of a matmul: three matmuls of the same size.
  g = jax.value_and_grad(lambda a, b: jnp.sum(jax.jit(mm)(a, b)), (0, 1))
  assert flops.jaxpr_flops(g, a, b) == 3 * 2 * 8 * 16 * 32



def test_jaxpr_flops_counts_cudnn_fused_attention(monkeypatch):
  """cuDNN's fused attention is one primitive per direction: counted as the
  products it replaces (Q K^T, P V forward; dV, dP, dQ, dK backward), i.e.
  the same as XLA's written-out attention of the same shapes."""
  from benchmarks import flops  # pylint: disable=g-import-not-at-top
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  # Trace (never run) the cuDNN path on a host without cuDNN.
  monkeypatch.setattr(fa, 'check_cudnn_version', lambda: 91000)
  monkeypatch.setattr(fa, 'check_compute_capability', lambda *a, **k: True)
  b, t, h, k = 2, 24, 3, 16
  qkv = [jnp.ones((b, t, h, k), jnp.bfloat16)] * 3

  def loss(impl):
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, implementation=impl).astype(jnp.float32).sum()

  fused = jax.value_and_grad(loss('cudnn'), (0, 1, 2))
  written = jax.value_and_grad(loss('xla'), (0, 1, 2))
  assert flops.jaxpr_flops(fused, *qkv) == 6 * 2 * b * h * t * t * k
  assert flops.jaxpr_flops(fused, *qkv) == flops.jaxpr_flops(written, *qkv)
  # Forward only: the two products.
  assert flops.jaxpr_flops(loss('cudnn'), *qkv) == 2 * 2 * b * h * t * t * k

def test_trace_summary_union_and_device_breakdown():
  from benchmarks import trace_summary  # pylint: disable=g-import-not-at-top
  # Overlaps count once, gaps not at all, touching intervals merge.
  assert trace_summary.union_length([(0, 2), (1, 3), (5, 6), (6, 7)]) == 5
  assert trace_summary.union_length([]) == 0
  meta = [
      dict(ph='M', pid=1, name='process_name', args=dict(name='/host:CPU')),
      dict(ph='M', pid=2, name='process_name',
           args=dict(name='/device:GPU:0')),
      dict(ph='M', pid=2, tid=7, name='thread_name',
           args=dict(name='Stream #7(Compute)')),
      dict(ph='M', pid=2, tid=8, name='thread_name',
           args=dict(name='XLA Ops')),
  ]
  x = lambda tid, ts, dur, name, pid=2: dict(  # noqa: E731
      ph='X', pid=pid, tid=tid, ts=ts, dur=dur, name=name)
  events = meta + [
      x(7, 0, 4, 'sm90_xmma_gemm_bf16'), x(7, 4, 2, 'loop_add_fusion'),
      x(7, 10, 3, 'cudnn_fmha_fwd'), x(7, 13, 1, 'sm90_xmma_gemm_bf16'),
      x(8, 0, 6, 'fusion.3'), x(1, 0, 100, 'python', pid=1)]
  dev, = trace_summary.summarise(events)
  assert dev['device'] == '/device:GPU:0'  # the host is left out
  assert dev['stream'] == 'Stream #7(Compute)'
  assert dev['busy_fraction'] == pytest.approx(10 / 14)  # gap 6..10
  assert dev['by_kind'] == {'matmul': 5, 'attention': 3, 'fusion': 2}
  assert dev['top'][0] == dict(name='sm90_xmma_gemm_bf16', us=5, count=2)
  assert dev['top_ops'] == [dict(name='fusion.3', us=6, count=1)]
  kind = trace_summary.kind_of
  assert kind('loop_convert_multiply_fusion') == 'fusion'  # not 'conv'
  assert kind('cudnn::fusion::compute_dot_do_o_specialized') == 'attention'
  assert kind('cudnn::fusion::convert_dq_to_16bits') == 'attention'
  assert kind('sm90_xmma_fprop_implicit_gemm_bf16') == 'convolution'
  assert kind('nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT') == 'matmul'
  assert kind('cudnn_infer_conv2d_nhwc') == 'convolution'
  assert kind('input_transpose_fusion_24') == 'transpose/copy'
  text = trace_summary.report([dev], steps=1)
  assert 'busy 71.4%' in text and 'XLA Ops' in text


def test_aot_gpu_hlo_summary():
  """Bytes per HLO type string, fusions by kind (bytes written and read),
  transposes and batch-minor arrays read off an optimised module's entry
  computation."""
  from benchmarks import aot_gpu  # pylint: disable=g-import-not-at-top
  assert aot_gpu.shape_bytes('bf16[4,8]{1,0}') == 64
  assert aot_gpu.shape_bytes('(f32[2,3]{1,0}, s8[5]{0})') == 29
  hlo = '\n'.join([
      '%fused_transpose.3 (p: bf16[8,4,16]) -> bf16[4,16,8] {',
      '  ROOT %t = bf16[4,16,8]{2,1,0} transpose(%p), dimensions={1,2,0}',
      '}',
      '%fused_slice.2 (q: bf16[8,4,16]) -> bf16[2,4,16] {',
      '  %q = bf16[8,4,16]{2,1,0} parameter(0)',
      '  ROOT %s = bf16[2,4,16]{2,1,0} slice(%q), '
      'slice={[0:2], [0:4], [0:16]}',
      '}',
      'ENTRY %main (a: bf16[8,4,16]) -> bf16[8,4,16] {',
      '  %input_slice_fusion.2 = bf16[2,4,16]{2,1,0} fusion(%a), '
      'kind=kInput, calls=%fused_slice.2',
      '  %loop_broadcast_fusion = bf16[2,4]{1,0} fusion(%a), '
      'kind=kLoop, calls=%fused_broadcast',
      '  %input_transpose_fusion.3 = bf16[4,16,8]{2,1,0} fusion(%a), '
      'kind=kInput, calls=%fused_transpose.3',
      '  %loop_add_fusion = (f32[8,4,16]{2,1,0}, f32[4]{0}) fusion(%a), '
      'kind=kLoop, calls=%fused_add.1',
      '  ROOT %cc = bf16[8,4,16]{2,1,0} '
      'custom-call(%input_transpose_fusion.3), '
      'custom_call_target="__cudnn$fmhaSoftmax"',
      '}'])
  s = aot_gpu.summarise_hlo(hlo, batch=8)
  assert s['fusions'] == {  # each reads `a` or the transpose (1024 B) ...
      'add': dict(count=1, bytes=8 * 4 * 16 * 4 + 16, bytes_read=1024),
      'transpose': dict(count=1, bytes=1024, bytes_read=1024),
      'custom-call __cudnn$fmhaSoftmax': dict(count=1, bytes=1024,
                                              bytes_read=1024),
      # ... but only the part a slice keeps, or one element of `a` per
      # output element of a loop fusion
      'slice': dict(count=1, bytes=256, bytes_read=256),
      'broadcast': dict(count=1, bytes=16, bytes_read=16)}
  assert s['bytes_written'] == 2064 + 2048 + 256 + 16
  assert s['bytes_read'] == 3 * 1024 + 256 + 16
  assert s['transposing'] == ['input_transpose_fusion.3']
  assert s['batch_minor_shapes'] == ['bf16[4,16,8]{2,1,0}']
