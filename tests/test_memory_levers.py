"""What trades memory for compute must not change the numbers a run produces.

The fused, chunked LM-head loss and the remat policies are there so larger
micro-batches fit; they must give the same loss and gradients as the plain
path, and really drop what they claim to drop from the backward pass.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model

from jaxgpt import attention, head_loss
from jaxgpt.model import GPT, GPTConfig, init_params
from jaxgpt.plan.memory import backward_residuals

BASE = tiny_model(vocab_size=96)


def loss_and_grads(cfg: GPTConfig, params, tokens_BT1, *, train: bool = False):
  model = GPT(cfg)
  rngs = {"dropout": jax.random.PRNGKey(7)} if train else None

  def loss(p):
    return model.apply({"params": p}, tokens_BT1[:, :-1], tokens_BT1[:, 1:], train=train,
                       rngs=rngs, method=GPT.loss)

  return jax.jit(jax.value_and_grad(loss))(params)


def assert_trees_close(a, b, **tolerance):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, **tolerance)


@pytest.fixture(scope="module")
def params():
  return init_params(GPT(BASE), jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def tokens_BT1():
  return jax.random.randint(jax.random.PRNGKey(1), (3, 17), 0, BASE.vocab_size)


@pytest.mark.parametrize("chunk_size", [7, 16, 48, 1000])  # uneven, exact, whole, larger
def test_chunked_loss_and_gradients_equal_the_whole_logits_path(params, tokens_BT1, chunk_size):
  whole_loss, whole_grads = loss_and_grads(dataclasses.replace(BASE, loss_chunk_size=0), params,
                                           tokens_BT1)
  loss, grads = loss_and_grads(dataclasses.replace(BASE, loss_chunk_size=chunk_size), params,
                               tokens_BT1)
  assert float(loss) == pytest.approx(float(whole_loss), abs=2e-6)
  assert_trees_close(grads, whole_grads, rtol=1e-5, atol=1e-7)


def test_chunked_loss_in_bfloat16_stays_close_to_the_whole_logits_path(params, tokens_BT1):
  # bfloat16 matmuls either way; the chunked path accumulates the logits in float32.
  cfg = dataclasses.replace(BASE, dtype="bfloat16")
  whole_loss, whole_grads = loss_and_grads(dataclasses.replace(cfg, loss_chunk_size=0), params,
                                           tokens_BT1)
  loss, grads = loss_and_grads(dataclasses.replace(cfg, loss_chunk_size=16), params, tokens_BT1)
  assert float(loss) == pytest.approx(float(whole_loss), abs=2e-3)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(whole_grads), strict=True):
    assert float(jnp.linalg.norm(g - w)) <= 0.02 * float(jnp.linalg.norm(w)) + 1e-6


def test_chunked_loss_in_bfloat16_scales_the_hidden_gradient_exactly():
  """d(loss)/d(hidden) in bfloat16 is float32's, rounded, for a token count that is not a
  power of two: the mean's 1/N rounded to bfloat16 scaled it by 1.0018 here."""
  N, D, V = 192, 64, 96
  k_x, k_e, k_t = jax.random.split(jax.random.PRNGKey(0), 3)
  x_ND = jax.random.normal(k_x, (N, D)).astype(jnp.bfloat16)
  embedding_VD = 0.02 * jax.random.normal(k_e, (V, D))
  targets_N = jax.random.randint(k_t, (N,), 0, V)

  def d_hidden(dtype):
    loss = lambda x: head_loss.mean_cross_entropy(x, embedding_VD, targets_N, chunk_size=64,
                                                  dtype=dtype)
    return jax.grad(loss)(x_ND.astype(dtype)).astype(jnp.float32)

  got, exact = d_hidden("bfloat16"), d_hidden("float32")
  assert float(jnp.vdot(got, exact) / jnp.vdot(exact, exact)) == pytest.approx(1, abs=2e-4)


def test_interleaved_chunks_give_the_loss_and_hidden_gradient_of_contiguous_ones():
  """fsdp's interleaved chunks (chunk c of rows c, c + C, ...), a padded one among them: the
  same mean, and d(hidden) back in the rows' own order."""
  N, D, V = 50, 16, 96  # 4 chunks of 13, the last 2 rows padding
  k_x, k_e, k_t = jax.random.split(jax.random.PRNGKey(0), 3)
  x_ND = jax.random.normal(k_x, (N, D))
  embedding_VD = 0.02 * jax.random.normal(k_e, (V, D))
  targets_N = jax.random.randint(k_t, (N,), 0, V)

  def loss_and_d_hidden(rows_on):
    loss = lambda x: head_loss.mean_cross_entropy(x, embedding_VD, targets_N, chunk_size=13,
                                                  dtype="float32", rows_on=rows_on)
    return jax.value_and_grad(loss)(x_ND)

  one_device = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  (loss, d_x), (contiguous, d_x_contiguous) = (loss_and_d_hidden(one_device),
                                               loss_and_d_hidden(None))
  assert float(loss) == pytest.approx(float(contiguous), abs=1e-6)
  np.testing.assert_allclose(d_x, d_x_contiguous, rtol=1e-5, atol=1e-8)


def test_interleaved_chunks_give_each_token_s_loss_in_the_tokens_order():
  """The eval tasks' per-token losses under fsdp (interleaved chunks, a padded one among
  them): those of contiguous chunks, each at its own token."""
  N, D, V = 50, 16, 96  # 4 chunks of 13, the last 2 rows padding
  k_x, k_e, k_t = jax.random.split(jax.random.PRNGKey(0), 3)
  x_ND, targets_N = jax.random.normal(k_x, (N, D)), jax.random.randint(k_t, (N,), 0, V)
  embedding_VD = 0.02 * jax.random.normal(k_e, (V, D))
  one_device = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  losses = [head_loss.token_cross_entropy(x_ND, embedding_VD, targets_N, chunk_size=13,
                                          dtype="float32", rows_on=rows_on)
            for rows_on in (one_device, None)]
  np.testing.assert_allclose(*losses, rtol=1e-6)


@pytest.mark.parametrize("N,devices,chunks", [
    (98_304, 6, 16),  # fineweb_40m's 16 x 1024 on 6 GPUs: 12 chunks did not divide 16,384 rows
    (196_608, 6, 32),  # gpt2_124m's 32 x 1024 on 6 GPUs (24 before)
    (786_432, 24, 128),  # on 3 hosts of 8 GPUs (96 before)
    (262_144, 8, 32),  # on 8 GPUs the fewest chunks divide them already
    (98_304, 1, 12),  # one device: the fewest, as ever
    (8 * 2 * 4_099, 8, 9)])  # 2 x a prime rows a device: 4,099 chunks of 16 would be too small
def test_interleaved_chunks_divide_each_device_s_rows(N, devices, chunks):
  """fsdp splits the N rows contiguously over the devices: interleaved chunks are split the
  same way, with no padding, only where their count divides each device's rows."""
  mesh = jax.sharding.AbstractMesh((devices,), ("data",))
  x_CSD, _, weights_CS = jax.eval_shape(
      lambda x, t: head_loss._chunks(x, t, 8192, mesh),
      jax.ShapeDtypeStruct((N, 1), jnp.float32), jax.ShapeDtypeStruct((N,), jnp.int32))
  C, S = weights_CS.shape
  assert C == chunks and x_CSD.shape[1] <= 8192
  if N // devices % C == 0:
    assert C * S == N and S % devices == 0  # each device's S / devices rows of every chunk


def test_eval_loss_without_gradients_uses_the_chunked_forward(params, tokens_BT1):
  def loss(chunk_size):
    return GPT(dataclasses.replace(BASE, loss_chunk_size=chunk_size)).apply(
        {"params": params}, tokens_BT1[:, :-1], tokens_BT1[:, 1:], method=GPT.loss)

  assert float(loss(7)) == pytest.approx(float(loss(0)), abs=2e-6)


def residual_shapes(cfg: GPTConfig, batch: int) -> list[tuple[int, ...]]:
  """Shapes of every array the backward pass keeps from the forward pass."""
  return [leaf.shape for leaf in backward_residuals(GPT(cfg), batch)]


def test_chunked_loss_keeps_no_logits_for_the_backward_pass():
  cfg = dataclasses.replace(BASE, block_size=64, attention="xla")
  B, T, V = 4, cfg.block_size, cfg.vocab_size
  whole = residual_shapes(dataclasses.replace(cfg, loss_chunk_size=0), B)
  chunked = residual_shapes(dataclasses.replace(cfg, loss_chunk_size=64), B)
  assert (B, T, V) in whole
  assert not any(V in s and np.prod(s) >= 64 * V for s in chunked if s != (V, cfg.n_embd))


@pytest.mark.parametrize("policy", ["dots", "full"])
def test_remat_gives_the_same_loss_and_gradients_with_dropout(params, tokens_BT1, policy):
  cfg = dataclasses.replace(BASE, dropout=0.1)
  loss, grads = loss_and_grads(cfg, params, tokens_BT1, train=True)
  remat_loss, remat_grads = loss_and_grads(dataclasses.replace(cfg, remat=policy), params,
                                           tokens_BT1, train=True)
  assert float(remat_loss) == pytest.approx(float(loss), abs=1e-6)
  assert_trees_close(remat_grads, grads, rtol=1e-5, atol=1e-7)


def test_remat_drops_the_attention_scores_from_the_backward_pass():
  cfg = dataclasses.replace(BASE, block_size=64, attention="xla")
  scores = (4, cfg.n_head, cfg.block_size, cfg.block_size)
  has_scores = lambda shapes: any(s[-3:] == scores[-3:] for s in shapes)
  assert has_scores(residual_shapes(cfg, 4))
  for policy in ("dots", "full"):
    assert not has_scores(residual_shapes(dataclasses.replace(cfg, remat=policy), 4))


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")
def test_auto_attention_on_this_gpu_trains_like_xla_attention(tokens_BT1):
  cfg = dataclasses.replace(BASE, n_embd=64, n_head=2, dtype="bfloat16")  # head size 32
  params = init_params(GPT(cfg), jax.random.PRNGKey(0))
  device = jax.devices()[0]
  if tuple(int(x) for x in device.compute_capability.split(".")[:2]) < (8, 0):
    pytest.skip(f"{device.device_kind} runs no cuDNN flash attention")
  assert attention.for_device("auto", cfg.dtype, 32, device) == "cudnn"
  loss, grads = loss_and_grads(cfg, params, tokens_BT1)
  xla_loss, xla_grads = loss_and_grads(dataclasses.replace(cfg, attention="xla"), params,
                                       tokens_BT1)
  assert float(loss) == pytest.approx(float(xla_loss), abs=2e-2)
  for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(xla_grads), strict=True):
    assert float(jnp.linalg.norm(g - w)) <= 0.05 * float(jnp.linalg.norm(w)) + 1e-6
