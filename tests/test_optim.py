"""AdamW, the decay mask and nanoGPT's learning-rate schedule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt import defaults
from jaxgpt.optim import OptimConfig, lr_schedule, make_optimizer


def nanogpt_get_lr(it: int, c) -> float:
  """nanoGPT's train.py get_lr, transcribed as the reference."""
  if not c.decay_lr:
    return c.learning_rate
  if it < c.warmup_iters:
    return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
  if it > c.lr_decay_iters:
    return c.min_lr
  ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
  coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
  return c.min_lr + coeff * (c.learning_rate - c.min_lr)


def schedule_config(**kw) -> OptimConfig:
  """The optimizer keys of nanoGPT's defaults, with fineweb_40m's schedule and `kw`."""
  c = defaults.get_config()
  c.learning_rate, c.min_lr, c.warmup_iters, c.lr_decay_iters = 5e-4, 5e-5, 700, 20000
  c.update(kw)
  return defaults.view(OptimConfig, c)


@pytest.mark.parametrize("it", [0, 1, 699, 700, 701, 10350, 19999, 20000, 20001, 50000])
def test_schedule_equals_nanogpt(it):
  c = schedule_config()
  assert float(lr_schedule(c)(it)) == pytest.approx(nanogpt_get_lr(it, c), rel=1e-5)


def test_schedule_landmarks():
  c = schedule_config()
  s = lr_schedule(c)
  assert float(s(0)) == pytest.approx(5e-4 / 701, rel=1e-5)
  assert float(s(699)) == pytest.approx(5e-4 * 700 / 701, rel=1e-5)
  assert float(s(700)) == pytest.approx(5e-4, rel=1e-5)
  assert float(s(10350)) == pytest.approx((5e-4 + 5e-5) / 2, rel=1e-5)  # cosine midpoint
  assert float(s(20000)) == pytest.approx(5e-5, rel=1e-5)
  assert float(s(10**6)) == pytest.approx(5e-5, rel=1e-5)


def test_schedule_without_warmup_and_constant():
  c = schedule_config(warmup_iters=0)
  assert float(lr_schedule(c)(0)) == pytest.approx(5e-4, rel=1e-5)
  c = schedule_config(decay_lr=False)
  assert [float(lr_schedule(c)(i)) for i in (0, 700, 30000)] == pytest.approx([5e-4] * 3)


def test_weight_decay_touches_only_matrices():
  c = schedule_config(decay_lr=False, weight_decay=0.1, learning_rate=0.5, grad_clip=0.0)
  params = {"kernel": jnp.ones((3, 4)), "embedding": jnp.ones((5, 2)),
            "bias": jnp.ones((4,)), "scale": jnp.ones((4,))}
  tx = make_optimizer(c)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["kernel"], 1 - 0.5 * 0.1)
  np.testing.assert_allclose(new["embedding"], 1 - 0.5 * 0.1)
  np.testing.assert_array_equal(new["bias"], 1.0)
  np.testing.assert_array_equal(new["scale"], 1.0)


def test_adamw_first_step_and_clipping():
  # Adam's first update is lr * g / (|g| + eps) per element. Clipping to a global
  # norm of 1e-9 makes |g| comparable to eps=1e-8, which shrinks the step: so the
  # clip is applied before Adam, with Adam's eps of 1e-8.
  params = {"w": jnp.ones((2, 2))}
  grads = {"w": jnp.full((2, 2), 3.0)}
  for clip, expected in ((0.0, 1.0), (1e-9, 0.5e-9 / (0.5e-9 + 1e-8))):
    c = schedule_config(decay_lr=False, learning_rate=0.1, weight_decay=0.0, grad_clip=clip)
    tx = make_optimizer(c)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * expected, rtol=1e-4)


def test_adam_takes_beta1_for_the_mean_and_beta2_for_the_variance():
  """Gradients 1 then 0: Adam's second update is -lr * m_hat / (sqrt(v_hat) + eps) with
  m_hat = b1 / (1 + b1) and v_hat = b2 / (1 + b2); a constant gradient cannot tell the betas
  apart, and swapped they give -0.708 instead of -0.679."""
  c = schedule_config(decay_lr=False, learning_rate=1.0, weight_decay=0.0, grad_clip=0.0,
                      beta1=0.9, beta2=0.95)
  tx = make_optimizer(c)
  params = {"w": jnp.zeros((2, 2))}
  _, state = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
  updates, _ = tx.update({"w": jnp.zeros((2, 2))}, state, params)
  b1, b2 = 0.9, 0.95
  np.testing.assert_allclose(updates["w"], -(b1 / (1 + b1)) / (math.sqrt(b2 / (1 + b2)) + 1e-8),
                             rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_each_update_is_taken_at_the_schedule_s_rate(optimizer):
  """The rate the optimizer applies at iteration `it` is lr_schedule's (what the loop logs):
  under a constant gradient Adam's step is lr * g / (|g| + eps), and Muon's is its rate times
  the same orthogonalised matrix each time."""
  c = schedule_config(optimizer=optimizer, learning_rate=0.1, min_lr=0.01, warmup_iters=3,
                      lr_decay_iters=10, weight_decay=0.0, grad_clip=0.0, muon_learning_rate=2.0,
                      muon_momentum_warmup_iters=0)
  params = {"wte": {"embedding": jnp.ones((4, 2))}, "h_0": {"c_fc": {"kernel": jnp.ones((2, 3))}}}
  grads = {"wte": {"embedding": jnp.ones((4, 2))},
           "h_0": {"c_fc": {"kernel": jnp.arange(1.0, 7.0).reshape(2, 3)}}}
  tx = make_optimizer(c)
  state = tx.init(params)
  adam, matrix = [], []
  for _ in range(14):
    updates, state = tx.update(grads, state, params)
    adam.append(float(updates["wte"]["embedding"][0, 0]))
    matrix.append(np.asarray(updates["h_0"]["c_fc"]["kernel"]))
  rates = [float(lr_schedule(c)(it)) for it in range(14)]
  assert rates[0] == pytest.approx(0.1 / 4) and rates[12] == pytest.approx(0.01)
  np.testing.assert_allclose(adam, [-r for r in rates], rtol=1e-6)
  if optimizer == "adamw":
    np.testing.assert_allclose(matrix, [-r * np.ones((2, 3)) for r in rates], rtol=1e-6)
  else:  # the matrix group on Muon's own rate: 2.0 at the peak, scaled down with it
    muon_rates = [float(lr_schedule(c, peak=2.0)(it)) for it in range(14)]
    assert muon_rates == pytest.approx([20 * r for r in rates])
    np.testing.assert_allclose(matrix, [r / muon_rates[5] * matrix[5] for r in muon_rates],
                               rtol=1e-4)


@pytest.mark.parametrize("keys", [{"decay_lr": False}, {}, {"lr_schedule": "wsd"},
                                  {"warmup_iters": 0}])
def test_the_logged_rate_is_the_rate_the_optimizer_takes(keys):
  """The loop logs (and the report and a resume read) the schedule on the host, in numpy."""
  c = schedule_config(**{"warmup_iters": 10, "lr_decay_iters": 100, **keys})
  device, host = lr_schedule(c), lr_schedule(c, np)
  for it in (0, 5, 10, 50, 95, 100, 150):
    assert float(host(it)) == pytest.approx(float(device(it)), rel=1e-6), it
