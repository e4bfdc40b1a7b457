"""Token generation from a GPT: temperature, top-k and top-p sampling.

`generate` decodes with a KV cache: one jitted program per (batch, prompt
bucket, max_new_tokens, sampling settings) prefills the prompts, right-padded
to a power of two, then a `lax.while_loop` feeds one token per step. Each
token's context is nanoGPT's, the last block_size tokens. Once a row outgrows
block_size its cached keys and values are stale (each was made in a context
the window has since dropped and, with learned positions, at a position that
has moved), so the program recomputes that row's window per token.

`generate_recompute` is nanoGPT's sample.py (the full forward pass over a fixed
block_size window per token), the reference the cached decoder is checked against.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt import tokenizer
from jaxgpt.errors import UserError
from jaxgpt.inference import scoring
from jaxgpt.model import GPT

MIN_BUCKET = 16


def sample_logits(logits_BV: jax.Array, rng: jax.Array, temperature: float,
                  top_k: int | None, top_p: float | None = None) -> jax.Array:
  """Next tokens (B,) from float32 logits; temperature 0 is greedy.

  top_k keeps the k most likely tokens; top_p then keeps the smallest set of
  the most likely tokens whose probability reaches top_p (nucleus sampling).
  """
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  if top_k is not None and top_k < logits_BV.shape[-1]:
    # The min of the top k, not its last element: XLA:CPU turns top_k-then-slice into a
    # full sort of the vocabulary, ~40x slower.
    kth_B1 = jnp.min(jax.lax.top_k(logits_BV, top_k)[0], axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if top_p is not None and top_p < 1.0:
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # A token stays when the tokens more likely than it hold less than top_p.
    keep_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV < top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _sampled_vocab(logits_BV: jax.Array) -> jax.Array:
  return logits_BV[:, :tokenizer.N_VOCAB]  # never sample the padding ids past GPT-2's vocab


def pad_prompts(prompts: Sequence[Sequence[int]], block_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded (B, bucket) prompts, each cropped to its last block_size tokens, and lengths."""
  if not prompts:
    raise UserError("no prompts to sample from")
  cropped = [list(p)[-block_size:] for p in prompts]
  if any(len(p) == 0 for p in cropped):
    raise UserError("a prompt is empty: give at least one token (e.g. end-of-text, 50256)")
  lengths_B = np.array([len(p) for p in cropped], np.int32)
  width = scoring.bucket(int(lengths_B.max()), block_size, MIN_BUCKET)
  prompt_BP = np.zeros((len(cropped), width), np.int32)
  for row, p in zip(prompt_BP, cropped):
    row[:len(p)] = p
  return prompt_BP, lengths_B


MIN_TEMPERATURE = 1e-30  # logits up to 3e8 in size still divide by it within float32
MAX_NEW_TOKENS = 1_000_000  # hours of decoding; more would near int32 positions and fill memory
TEMPERATURE, TOP_K = 0.8, 200  # nanoGPT's sample.py settings


def check_settings(max_new_tokens: int, temperature: float, top_k: int | None,
                   top_p: float | None) -> None:
  """Refuses settings that would sample nonsense without failing: top_p <= 0 keeps no token
  (every sample token 0), a negative temperature makes the least likely tokens the likeliest,
  a tiny one overflows the logits.
  `sample` calls it before loading weights, so a bad flag costs no load."""
  if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
    raise UserError(f"max_new_tokens={max_new_tokens}: must be in [1, {MAX_NEW_TOKENS:,}]")
  # Over float32's largest (inf too) it is inf on the device: every logit 0, so top_k and top_p
  # keep every token.
  if not 0.0 <= temperature <= float(np.finfo(np.float32).max):
    raise UserError(f"temperature={temperature}: must be >= 0 and finite in float32 (0 is "
                    "greedy, 1 as trained)")
  if 0.0 < temperature < MIN_TEMPERATURE:  # every logit over it is +-inf: token 0 each time
    raise UserError(f"temperature={temperature}: below {MIN_TEMPERATURE:g} the float32 logits "
                    "divided by it overflow; 0 samples greedily")
  if top_k is not None and top_k < 1:
    raise UserError(f"top_k={top_k}: must be positive")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise UserError(f"top_p={top_p}: must be in (0, 1] (1 keeps every token)")
  if top_p is not None and top_p < np.finfo(np.float32).tiny:  # a device flushes it to 0
    raise UserError(f"top_p={top_p}: below float32's smallest normal number, "
                    f"{np.finfo(np.float32).tiny:.3g}, which keeps the likeliest token alone "
                    "(a smaller one would be 0 on the device, and keep none)")


def generate(model: GPT, params: dict, prompts: Sequence[Sequence[int]], rng: jax.Array, *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_token: int | None = None,
             kept_rows: int | None = None) -> np.ndarray:
  """(B, max_new_tokens) tokens following each prompt, decoded with a KV cache.

  With `stop_token`, a row stops at that token and the rest of it is filled
  with it; decoding ends once every row has stopped. Rows from `kept_rows` on
  only fill a batch out (to reuse its compiled program): they start stopped,
  never waited for.
  """
  check_settings(max_new_tokens, temperature, top_k, top_p)
  prompt_BP, lengths_B = pad_prompts(prompts, model.config.block_size)
  largest = int(prompt_BP.max())
  if largest >= model.config.vocab_size:  # its embedding would be NaN, every sample 0s
    raise UserError(f"the prompt holds token {largest}, beyond the model's vocab_size="
                    f"{model.config.vocab_size}: the model was trained on other tokens than "
                    "GPT-2's (a character-level nanoGPT run, say)")
  tokens_BN = generate_padded(model, params, jnp.asarray(prompt_BP), jnp.asarray(lengths_B),
                              rng, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, stop_token=stop_token,
                              kept_rows=kept_rows)
  return np.asarray(tokens_BN)


@dataclasses.dataclass(frozen=True)
class _Sampler:
  """Draws token j of every row with fold_in(rng, j); a row that met `stop_token` repeats it."""

  rng: jax.Array
  temperature: float
  top_k: int | None
  top_p: float | None
  stop_token: int | None
  max_new_tokens: int

  def __call__(self, logits_BV: jax.Array, j: jax.Array, done_B: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    next_B = sample_logits(_sampled_vocab(logits_BV), jax.random.fold_in(self.rng, j),
                           self.temperature, self.top_k, self.top_p)
    if self.stop_token is None:
      return next_B, done_B
    next_B = jnp.where(done_B, self.stop_token, next_B)
    return next_B, done_B | (next_B == self.stop_token)

  def running(self, j: jax.Array, done_B: jax.Array) -> jax.Array:
    return (j < self.max_new_tokens) & ~jnp.all(done_B)


def init_cache(model: GPT, batch_size: int, length: int) -> dict:
  """A zeroed KV cache of `length` slots per layer, for decoding with `positions_BT`."""
  tokens_BS = jnp.zeros((batch_size, length), jnp.int32)
  positions_BS = jnp.broadcast_to(jnp.arange(length), (batch_size, length))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens_BS,
                                             positions_BT=positions_BS, method=GPT.trunk))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _cached_steps(model: GPT, params: dict, cache: dict, seq_BL: jax.Array,
                  lengths_B: jax.Array, sample: _Sampler, end: jax.Array, done_B: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Tokens 1..end-1: token j-1, at position lengths + j - 1, goes in; token j comes out."""
  rows_B = jnp.arange(seq_BL.shape[0])

  def cached_step(carry):
    j, seq_BL, cache, done_B = carry
    positions_B1 = (lengths_B + j - 1)[:, None]
    token_B1 = jnp.take_along_axis(seq_BL, positions_B1, axis=1)
    logits_BV, variables = model.apply({"params": params, "cache": cache}, token_B1,
                                       jnp.zeros_like(lengths_B), positions_B1,
                                       method=GPT.next_logits, mutable=["cache"])
    next_B, done_B = sample(logits_BV, j, done_B)
    return j + 1, seq_BL.at[rows_B, lengths_B + j].set(next_B), variables["cache"], done_B

  j, seq_BL, _, done_B = jax.lax.while_loop(
      lambda c: sample.running(c[0], c[3]) & (c[0] < end), cached_step,
      (jnp.int32(1), seq_BL, cache, done_B))
  return j, seq_BL, done_B


def _window_steps(model: GPT, params: dict, seq_BL: jax.Array, lengths_B: jax.Array,
                  sample: _Sampler, j: jax.Array, done_B: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The remaining tokens, each from the forward pass over its row's last block_size tokens."""
  T = model.config.block_size
  rows_B = jnp.arange(seq_BL.shape[0])

  def window_step(carry):
    j, seq_BL, done_B = carry
    length_B = lengths_B + j
    start_B = jnp.maximum(length_B - T, 0)
    window_BT = jax.vmap(lambda s, i: jax.lax.dynamic_slice_in_dim(s, i, T))(seq_BL, start_B)
    logits_BV = model.apply({"params": params}, window_BT, length_B - 1 - start_B,
                            method=GPT.next_logits)
    next_B, done_B = sample(logits_BV, j, done_B)
    return j + 1, seq_BL.at[rows_B, length_B].set(next_B), done_B

  return jax.lax.while_loop(lambda c: sample.running(c[0], c[2]), window_step,
                            (j, seq_BL, done_B))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k",
                                             "top_p", "stop_token"))
def generate_padded(model: GPT, params: dict, prompt_BP: jax.Array, lengths_B: jax.Array,
                    rng: jax.Array, *, max_new_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, stop_token: int | None,
                    kept_rows: int | jax.Array | None = None) -> jax.Array:
  """`generate` on prompts already padded by `pad_prompts`, as one jitted program.

  Generated token j of row b sits at position lengths_B[b] + j of `seq_BL`. The
  cache holds S slots, enough for the whole output when it fits in block_size;
  past that, decoding recomputes each row's window.
  """
  T = model.config.block_size
  B, P = prompt_BP.shape
  N = max_new_tokens
  S = min(T, P + N)
  sample = _Sampler(rng, temperature, top_k, top_p, stop_token, N)
  seq_BL = jnp.zeros((B, max(P + N, T)), jnp.int32).at[:, :P].set(prompt_BP)

  # Prefill: the prompts' keys and values fill slots [0, P); padding slots are overwritten
  # by generated tokens before any query can see them.
  positions_BP = jnp.broadcast_to(jnp.arange(P), (B, P))
  logits_BV, variables = model.apply({"params": params, "cache": init_cache(model, B, S)},
                                     prompt_BP, lengths_B - 1, positions_BP,
                                     method=GPT.next_logits, mutable=["cache"])
  fillers_B = jnp.arange(B) >= (B if kept_rows is None else kept_rows)
  next_B, done_B = sample(logits_BV, 0, fillers_B)
  seq_BL = seq_BL.at[jnp.arange(B), lengths_B].set(next_B)

  # Cached steps while every row's position has a cache slot.
  cached_end = jnp.minimum(N, S - jnp.max(lengths_B) + 1)
  j, seq_BL, done_B = _cached_steps(model, params, variables["cache"], seq_BL, lengths_B, sample,
                                    cached_end, done_B)
  if P + N > T:  # some row may outgrow block_size
    j, seq_BL, done_B = _window_steps(model, params, seq_BL, lengths_B, sample, j, done_B)

  out_BN = jax.vmap(lambda s, i: jax.lax.dynamic_slice_in_dim(s, i, N))(seq_BL, lengths_B)
  if stop_token is not None:  # rows that all stopped early left the tail unwritten
    out_BN = jnp.where(jnp.arange(N)[None] < j, out_BN, stop_token)
  return out_BN


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))
def generate_recompute(model: GPT, params: dict, prompt_BP: jax.Array, rng: jax.Array, *,
                       max_new_tokens: int, temperature: float = 1.0,
                       top_k: int | None = None) -> jax.Array:
  """Returns (B, max_new_tokens) tokens following the prompt, recomputing the context each step.

  The context is the last block_size tokens, held in a fixed-size buffer so
  the step has one shape; positions past the current length are never seen by
  the causal model. Token i is drawn with fold_in(rng, i), as `generate` draws it, so a
  seeded sample is checked against it token for token, not a greedy one alone.
  """
  T = model.config.block_size
  B, P = prompt_BP.shape
  total = P + max_new_tokens
  # Prompt and generated tokens in one buffer; the window [start, start+T) is the context.
  seq_BS = jnp.zeros((B, max(total, T)), jnp.int32).at[:, :P].set(prompt_BP.astype(jnp.int32))

  def body(i, seq_BS):
    length = P + i
    start = jnp.maximum(length - T, 0)
    window_BT = jax.lax.dynamic_slice_in_dim(seq_BS, start, T, axis=1)
    last_BV = model.apply({"params": params}, window_BT, jnp.full((B,), length - 1 - start),
                          method=GPT.next_logits)
    next_B = sample_logits(_sampled_vocab(last_BV), jax.random.fold_in(rng, i), temperature,
                           top_k)
    return jax.lax.dynamic_update_index_in_dim(seq_BS, next_B, length, axis=1)

  seq_BS = jax.lax.fori_loop(0, max_new_tokens, body, seq_BS)
  return seq_BS[:, P:total]


def continuation(model: GPT, params: dict, prompt: str, *, max_new_tokens: int,
                 seed: int) -> str:
  """The prompt and one sampled continuation of it; an empty prompt starts a new document
  (the model sees end-of-text).

  nanoGPT's sample.py settings: temperature 0.8, top_k 200, and its prompt's
  '<|endoftext|>' as the one token it is. With params split over several processes,
  every process must call it.
  """
  new = generate(model, params, [prompt_tokens(prompt)], jax.random.PRNGKey(seed),
                 max_new_tokens=max_new_tokens, temperature=TEMPERATURE, top_k=TOP_K)
  return prompt + tokenizer.decode_whole_characters(new[0].tolist())


def prompt_tokens(prompt: str) -> list[int]:
  """A prompt's GPT-2 tokens, its '<|endoftext|>' the one token it is; an empty prompt is that
  token alone, which begins a new document."""
  return (tokenizer.gpt2().encode(prompt, allowed_special={"<|endoftext|>"})
          or [tokenizer.EOT_TOKEN])
