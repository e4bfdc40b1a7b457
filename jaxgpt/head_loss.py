"""The LM head and its cross-entropy, fused and made chunk by chunk.

With a 50304-way vocabulary the float32 logits of one 16 x 1024 micro-batch
take 3.3 GB, and plain autodiff keeps them (and their bfloat16 twin, and
their gradient) alive from the forward pass to the backward pass: for a 40M
model that is most of the step's memory. Here each chunk of tokens gets its
logits, its loss and, when differentiated, its gradients with respect to the
hidden states and the embedding in one go; only those gradients outlive the
chunk. Peak memory then holds one chunk's logits, and the FLOPs are the same
as the unfused head's (one matmul forward, two for the gradients).

With a soft-cap, each chunk's logits z become cap * tanh(z / cap) before the
softmax, and the gradient through the cap, 1 - tanh², is applied in the same
chunk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def softcap(logits: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(logits / cap): logits squashed into (-cap, cap), near-identity well inside."""
  return cap * jnp.tanh(logits / cap)


def mean_cross_entropy(x_ND: jax.Array, embedding_VD: jax.Array, targets_N: jax.Array, *,
                       chunk_size: int, dtype: str, softcap: float = 0.0,
                       rows_on: Mesh | None = None) -> jax.Array:
  """Mean of -log softmax(x @ embedding.T)[target] over N tokens, in float32.

  `embedding_VD` is the head's matrix (the token embedding when tied);
  `softcap` > 0 caps the logits first.

  Matmuls run in `dtype` with float32 accumulation; the softmax is float32.
  N need not divide into chunks: it is split into equal chunks of at most
  `chunk_size` tokens, the last padded with tokens that weigh nothing.
  `rows_on` (the mesh XLA splits the rows over, fsdp's) makes chunk c of
  rows c, c + C, ...: each chunk then split like the rows. Contiguous chunks
  are split over the chunk axis, and each chunk gathered the whole of x_ND
  (gpt2_124m on 8 H100s: 21 GiB per device per iteration). Where the rows
  also outnumber the vocabulary, each device takes its rows against the
  whole matrix (`_loss_sum_fwd`), in the training and the evaluation step.
  """
  x_CSD, targets_CS, weights_CS = _chunks(x_ND, targets_N, chunk_size, rows_on)
  return _loss_sum(x_CSD, embedding_VD, targets_CS, weights_CS, jnp.dtype(dtype),
                   softcap, rows_on) / len(x_ND)


def token_cross_entropy(x_ND: jax.Array, embedding_VD: jax.Array, targets_N: jax.Array, *,
                        chunk_size: int, dtype: str, softcap: float = 0.0,
                        rows_on: Mesh | None = None) -> jax.Array:
  """Each token's -log softmax(x @ embedding.T)[target], (N,) in float32; forward only.

  What evaluation needs (a loss per answer token); the same chunks, matmuls
  and softmax as the mean above, and the losses in the tokens' order either way.
  """
  N = len(x_ND)
  x_CSD, targets_CS, _ = _chunks(x_ND, targets_N, chunk_size, rows_on)
  embedding_VD = embedding_VD.astype(dtype)
  losses_CS = jax.lax.map(
      lambda xs: _chunk_softmax(_chunk_logits(xs[0], embedding_VD, softcap), xs[1])[0],
      (x_CSD, targets_CS))
  return (losses_CS if rows_on is None else losses_CS.T).reshape(-1)[:N]


def _chunks(x_ND: jax.Array, targets_N: jax.Array, chunk_size: int, rows_on: Mesh | None
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """N tokens as equal chunks of at most `chunk_size` (of contiguous rows, or interleaved
  where `rows_on`), padded at the end; weights 0 on the pad.

  Interleaved chunks are split like fsdp's rows (contiguous over n devices) only where their
  count divides each device's rows: so it is the first that does, from the fewest to twice
  that (no further: a device's 2p rows, p a prime, would make chunks of 2n tokens). Else XLA
  moved rows for every chunk and the head could not take each device's own (`_loss_sum_fwd`):
  gpt2_124m on 6 H100s sent 45.8 GiB a device per iteration in 24 chunks, 12.0 in 32.
  """
  N = len(x_ND)
  n_chunks, n = -(-N // chunk_size), 1 if rows_on is None else rows_on.size
  if n > 1 and N % n == 0:
    n_chunks = next((c for c in range(n_chunks, 2 * n_chunks + 1) if N // n % c == 0), n_chunks)
  size = -(-N // n_chunks)
  pad = n_chunks * size - N

  def split(a: jax.Array) -> jax.Array:
    if rows_on is not None:
      return a.reshape(size, n_chunks, *a.shape[1:]).swapaxes(0, 1)
    return a.reshape(n_chunks, size, *a.shape[1:])

  x_CSD = split(jnp.pad(x_ND, ((0, pad), (0, 0))))
  targets_CS = split(jnp.pad(targets_N, (0, pad)))
  weights_CS = split((jnp.arange(n_chunks * size) < N).astype(jnp.float32))
  return x_CSD, targets_CS, weights_CS


def _chunk_logits(x_SD: jax.Array, embedding_VD: jax.Array, cap: float) -> jax.Array:
  logits_SV = jnp.dot(x_SD.astype(embedding_VD.dtype), embedding_VD.T,
                      preferred_element_type=jnp.float32)
  return softcap(logits_SV, cap) if cap else logits_SV


def _chunk_softmax(logits_SV: jax.Array, targets_S: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """Per-token losses and softmax of one chunk, with one exp per logit.

  (jax.nn.logsumexp followed by exp(logits - lse) would take two, and ran
  the chunk's softmax 2.3x slower on the CPU.)
  """
  max_S1 = logits_SV.max(axis=-1, keepdims=True)
  exp_SV = jnp.exp(logits_SV - max_S1)
  sum_S1 = exp_SV.sum(axis=-1, keepdims=True)
  lse_S = (max_S1 + jnp.log(sum_S1))[:, 0]
  picked_S = jnp.take_along_axis(logits_SV, targets_S[:, None], axis=-1)[:, 0]
  return lse_S - picked_S, exp_SV / sum_S1


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _loss_sum(x_CSD: jax.Array, embedding_VD: jax.Array, targets_CS: jax.Array,
              weights_CS: jax.Array, dtype: jnp.dtype, cap: float, rows_on: Mesh | None
              ) -> jax.Array:
  """Weighted sum of the token losses, one chunk at a time.

  The forward pass's sum alone: outside differentiation the gradients it also makes are
  unused, and JAX's dead-code elimination drops them before lowering, so this is the same
  program as a forward-only scan.
  """
  return _loss_sum_fwd(x_CSD, embedding_VD, targets_CS, weights_CS, dtype, cap, rows_on)[0]


def _loss_sum_fwd(x_CSD, embedding_VD, targets_CS, weights_CS, dtype, cap, rows_on):
  """The loss sum and, chunk by chunk, its gradients (kept instead of the logits).

  Where the rows are split over n devices and outnumber the vocabulary, each device takes its
  own rows against the whole matrix and keeps its own sum of d(embedding), reduced once (in
  `_loss_sum_bwd`). Left to itself, XLA split the vocabulary, gathering every chunk's rows and
  reduce-scattering their gradient: gpt2_124m on 8 H100s at 2 x 32 sent 3.30 GiB a device
  per iteration, now 1.57, for 0.22 GiB more memory (the whole matrix and that sum).
  """
  embedding_c_VD = embedding_VD.astype(dtype)
  (V, D), (C, S) = embedding_VD.shape, targets_CS.shape
  n = rows_on.size if rows_on is not None and C * S > V and S % rows_on.size == 0 else 1
  if n > 1:  # the whole matrix on each device, and each device's own sum split over them
    embedding_c_VD = jax.lax.with_sharding_constraint(
        embedding_c_VD, NamedSharding(rows_on, PartitionSpec()))
    own = functools.partial(jax.lax.with_sharding_constraint,
                            shardings=NamedSharding(rows_on, PartitionSpec(rows_on.axis_names)))

  def chunk(carry, xs):
    total, d_embedding_VD = carry
    x_SD, targets_S, weights_S = xs
    logits_SV = _chunk_logits(x_SD, embedding_c_VD, cap)
    losses_S, probs_SV = _chunk_softmax(logits_SV, targets_S)
    # Padding tokens need no weight here: their hidden states are zeros, so they
    # add nothing to d(embedding), and their d(hidden) rows are cut off with the pad.
    one_hot_SV = jnp.arange(V)[None, :] == targets_S[:, None]
    d_logits_SV = probs_SV - one_hot_SV
    if cap:  # d(cap tanh(z/cap))/dz = 1 - tanh(z/cap)^2, and tanh(z/cap) = capped / cap
      d_logits_SV = d_logits_SV * (1 - jnp.square(logits_SV / cap))
    d_logits_SV = d_logits_SV.astype(dtype)
    d_x_SD = jnp.dot(d_logits_SV, embedding_c_VD, preferred_element_type=jnp.float32)
    if n > 1:
      d_embedding_VD = own(d_embedding_VD + jnp.einsum(
          "nsv,nsd->nvd", d_logits_SV.reshape(n, -1, V), x_SD.astype(dtype).reshape(n, -1, D),
          preferred_element_type=jnp.float32))
    else:
      d_embedding_VD += jnp.dot(d_logits_SV.T, x_SD.astype(dtype),
                                preferred_element_type=jnp.float32)
    return (total + jnp.sum(weights_S * losses_S), d_embedding_VD), d_x_SD.astype(x_SD.dtype)

  init = (jnp.zeros((), jnp.float32),
          own(jnp.zeros((n, V, D), jnp.float32)) if n > 1 else jnp.zeros((V, D), jnp.float32))
  (total, d_embedding_VD), d_x_CSD = jax.lax.scan(chunk, init,
                                                  (x_CSD, targets_CS, weights_CS))
  return total, (d_x_CSD, d_embedding_VD.astype(embedding_VD.dtype))


def _loss_sum_bwd(dtype, cap, rows_on, residuals, g):
  del dtype, cap, rows_on
  d_x_CSD, d_embedding_VD = residuals
  # Scaled in float32: g (1/N for a mean) rounded to bfloat16 would bias every d(hidden).
  d_x_CSD = (g * d_x_CSD.astype(jnp.float32)).astype(d_x_CSD.dtype)
  d_embedding_VD = g * d_embedding_VD
  # Each device's own sum (n, V, D) is reduced here, not in the forward: XLA then adds the tied
  # lookup's gradient to it first, one float32 reduce-scatter of wte's gradient where there
  # were two (gpt2_124m on 8 H100s sent 10.56 GiB a device per iteration, now 8.54; the sum
  # kept whole until here, and XLA's order, cost 0.59 GiB more on 2 cards, 0.17 on 4).
  if d_embedding_VD.ndim == 3:
    d_embedding_VD = d_embedding_VD.sum(0)
  return d_x_CSD, d_embedding_VD, None, None


_loss_sum.defvjp(_loss_sum_fwd, _loss_sum_bwd)
