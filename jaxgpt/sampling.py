"""Token generation: temperature / top-k sampling from a GPT.

`generate_recompute` runs the full forward pass over a fixed block_size
window for every new token (what nanoGPT's sample.py does). It compiles once
per (batch, max_new_tokens) and is the reference that faster decoders are
checked against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxgpt import tokenizer
from jaxgpt.model import GPT


def sample_logits(logits_BV: jax.Array, rng: jax.Array, temperature: float,
                  top_k: int | None) -> jax.Array:
  """Next tokens (B,) from float32 logits; temperature 0 is greedy."""
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  if top_k is not None and top_k < logits_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))
def generate_recompute(model: GPT, params: dict, prompt_BP: jax.Array, rng: jax.Array, *,
                       max_new_tokens: int, temperature: float = 1.0,
                       top_k: int | None = None) -> jax.Array:
  """Returns (B, max_new_tokens) tokens following the prompt, recomputing the context each step.

  The context is the last block_size tokens, held in a fixed-size buffer so
  the step has one shape; positions past the current length are never seen by
  the causal model.
  """
  T = model.config.block_size
  B, P = prompt_BP.shape
  total = P + max_new_tokens
  # Prompt and generated tokens in one buffer; the window [start, start+T) is the context.
  seq_BS = jnp.zeros((B, max(total, T)), jnp.int32).at[:, :P].set(prompt_BP.astype(jnp.int32))

  def body(i, carry):
    seq_BS, rng = carry
    length = P + i
    start = jnp.maximum(length - T, 0)
    window_BT = jax.lax.dynamic_slice_in_dim(seq_BS, start, T, axis=1)
    logits_BTV = model.apply({"params": params}, window_BT)
    last_BV = jax.lax.dynamic_index_in_dim(logits_BTV, length - 1 - start, axis=1, keepdims=False)
    last_BV = last_BV[:, :tokenizer.N_VOCAB]  # never sample the padding ids past GPT-2's vocab
    rng, step_rng = jax.random.split(rng)
    next_B = sample_logits(last_BV, step_rng, temperature, top_k)
    return jax.lax.dynamic_update_index_in_dim(seq_BS, next_B, length, axis=1), rng

  seq_BS, _ = jax.lax.fori_loop(0, max_new_tokens, body, (seq_BS, rng))
  return seq_BS[:, P:total]
