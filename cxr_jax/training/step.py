"""The train state and the pure train step `(state, batch) -> (state, metrics)`."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from cxr_jax import losses
from cxr_jax import models
from cxr_jax import optim
from cxr_jax import weights
from cxr_jax.training import freezing


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  lr_scale: jax.Array  # reduce-on-plateau multiplier of every update

  def variables(self) -> dict:
    v = {'params': self.params}
    if self.batch_stats:
      v['batch_stats'] = self.batch_stats
    return v


def model_inputs(config, batch) -> dict:
  """The batch fields `config.model_inputs` passes to the model as kwargs."""
  return {k: batch[k] for k in config.model_inputs}


def loss_kwargs(config) -> dict:
  """`config.loss` without its `name`: the loss function's keywords."""
  return {k: v for k, v in config.loss.items() if k != 'name'}


def init_state(config, model, example_batch, rng) -> tuple[TrainState, Any]:
  """Initialises parameters (from `config.init` if set) and the optimizer.

  Returns `(state, (tx, labels))`: `labels` are the freezing schedule's
  labels of the parameters (`optim.schedule_labels`).
  """
  init_rng, state_rng = jax.random.split(rng)
  variables = models.init_variables(
      model, init_rng, example_batch['image'], train=False,
      **model_inputs(config, example_batch))
  variables = flax.core.unfreeze(variables)
  variables.pop('perturbations', None)
  if config.init.path:
    variables = weights.init_from(config.init, variables)
  variables = jax.tree.map(jnp.asarray, variables)
  tx, labels = optim.make_optimizer(config.optim, config.schedule,
                                    variables['params'])
  state = TrainState(
      step=jnp.asarray(0, jnp.int32), params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(variables['params']), rng=state_rng,
      lr_scale=jnp.asarray(1.0, jnp.float32))
  return state, (tx, labels)


def make_train_step(config, model, tx, labels=None):
  """The pure train step `(state, batch) -> (state, metrics)`.

  `labels` (from the freezing schedule) mark the frozen parameters: they are
  wrapped in `stop_gradient`, so that XLA skips their backward pass, and
  their frozen modules run in inference mode (`freezing`).
  """
  loss_fn = losses.get_loss(config.loss.name)
  loss_kw = loss_kwargs(config)
  frozen = freezing.frozen_modules(labels)

  def step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    has_bs = bool(state.batch_stats)

    def compute_loss(params):
      if labels is not None:
        params = jax.tree.map(
            lambda p, l: jax.lax.stop_gradient(p) if l == optim.FROZEN else p,
            params, labels)
      variables = {'params': params}
      if has_bs:
        variables['batch_stats'] = state.batch_stats
      with freezing.inference_mode(frozen):
        (logits, out), mutated = model.apply(
            variables, batch['image'], train=True,
            mutable=['batch_stats'] if has_bs else [], rngs={'dropout': rng},
            **model_inputs(config, batch))
      loss, metrics = loss_fn(logits, out, batch, **loss_kw)
      new_bs = mutated.get('batch_stats', {})
      freezing.check_untouched(state.batch_stats, new_bs, frozen,
                               config.model.name)
      return loss, (metrics, new_bs)

    (loss, (metrics, new_bs)), grads = jax.value_and_grad(
        compute_loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype),
                           updates)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads),
               'lr_scale': state.lr_scale}
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=new_bs, opt_state=opt_state), metrics

  return step
