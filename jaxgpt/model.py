"""GPT-2 in flax.linen, with nanoGPT's architecture and initialisation.

Each departure from GPT-2 that the modern recipes use is a config field,
off by default: rotary positions, RMSNorm, norms on queries and keys, ReLU²,
an untied head, zero-initialised projections and a soft-cap on the logits.

Params are float32; the matmuls and attention run in `dtype` (bfloat16 on
accelerators) while the residual stream, the norms' statistics and the loss
stay float32, as under nanoGPT's `torch.autocast`.
Shape suffixes: B batch, T time, S cache slots, D model width, N heads,
H head size, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxgpt import attention, defaults, head_loss


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  vocab_size: int = 50304
  block_size: int = 1024
  n_layer: int = 12
  n_head: int = 12
  n_embd: int = 768
  dropout: float = 0.0
  bias: bool = False
  gelu_approximate: bool = False  # tanh GELU (GPT-2's weights) instead of exact erf (nanoGPT)
  dtype: str = "float32"  # activation dtype
  attention: str = "auto"  # jax.nn.dot_product_attention implementation: xla | cudnn | auto
  loss_chunk_size: int = 8192  # tokens per chunk of the fused head + loss; 0: whole logits
  remat: str = "none"  # what the backward pass recomputes instead of keeping: see _REMAT_SAVEABLE
  pos_emb: str = "learned"  # learned position embeddings (GPT-2) | rope
  norm: str = "layernorm"  # layernorm (GPT-2) | rmsnorm
  qk_norm: bool = False  # RMSNorm on each head's queries and keys
  mlp_act: str = "gelu"  # gelu (GPT-2) | relu2
  tie_embeddings: bool = True  # the LM head is the token embedding
  zero_init_projections: bool = False  # c_proj (and an untied head) start at zero
  logit_softcap: float = 0.0  # logits -> cap * tanh(logits / cap) when > 0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> GPTConfig:
    return defaults.view(cls, config)


# Fields that change how the model computes or starts, not the function its params hold: a
# checkpoint serves under any value of these. Every other field is the architecture, so a
# new field is architecture until it is listed here (resume refuses a change to it).
HOW_NOT_WHAT = ("dtype", "attention", "loss_chunk_size", "remat", "dropout",
                "zero_init_projections")
ARCHITECTURE = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name not in HOW_NOT_WHAT)


# What a rematerialised block keeps for the backward pass (the rest it
# recomputes), by `remat` (defaults.REMAT_POLICIES; 'none' keeps everything).
# 'dots' keeps the outputs of the block's Dense layers (matmuls with no batch
# dimension) and recomputes the attention scores, softmax, GELU and LayerNorms,
# the memory-heavy but cheap parts; 'full' keeps only each block's input.
_REMAT_SAVEABLE = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


ROPE_BASE = 10000.0  # RoFormer's and Llama's


def _normal(std: float) -> nn.initializers.Initializer:
  return nn.initializers.normal(stddev=std)


def _norm(cfg: GPTConfig, name: str) -> nn.Module:
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=1e-6, dtype=cfg.dtype, name=name)
  return nn.LayerNorm(epsilon=1e-5, use_bias=cfg.bias, dtype=cfg.dtype, name=name)


def rotate(x_BTNH: jax.Array, positions_BT: jax.Array) -> jax.Array:
  """Rotary position embedding: each pair (x_i, x_{i+H/2}) turned by position x frequency_i.

  Angles are float32 whatever the activation dtype: at position 1000 a
  bfloat16 angle would be off by several radians' worth of rounding.
  """
  H = x_BTNH.shape[-1]
  inv_freq_F = ROPE_BASE ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
  angles_BT1F = (positions_BT.astype(jnp.float32)[:, :, None] * inv_freq_F)[:, :, None, :]
  cos, sin = jnp.cos(angles_BT1F), jnp.sin(angles_BT1F)
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BTNH.dtype)


def _residual_out(cfg: GPTConfig, h_BTF: jax.Array, train: bool) -> jax.Array:
  """How both halves of a block end: `c_proj` (the caller's: this runs in its compact method),
  then dropout.

  The init is GPT-2's, scaled by 1/sqrt(2 n_layer) as two such projections add to the
  residual stream per layer; zero-initialised, each block starts as the identity.
  """
  init = (nn.initializers.zeros if cfg.zero_init_projections
          else _normal(0.02 / math.sqrt(2 * cfg.n_layer)))
  y_BTD = nn.Dense(cfg.n_embd, use_bias=cfg.bias, dtype=cfg.dtype, kernel_init=init,
                   name="c_proj")(h_BTF)
  return nn.Dropout(cfg.dropout)(y_BTD, deterministic=not train)


class CausalSelfAttention(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_BTD: jax.Array, *, train: bool,
               positions_BT: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    B, T, D = x_BTD.shape
    N, H = cfg.n_head, D // cfg.n_head
    qkv_BT3D = nn.Dense(3 * D, use_bias=cfg.bias, dtype=cfg.dtype, kernel_init=_normal(0.02),
                        name="c_attn")(x_BTD)
    q_BTNH, k_BTNH, v_BTNH = (a.reshape(B, T, N, H) for a in jnp.split(qkv_BT3D, 3, axis=-1))
    if cfg.qk_norm:
      q_BTNH = nn.RMSNorm(epsilon=1e-6, dtype=cfg.dtype, name="q_norm")(q_BTNH)
      k_BTNH = nn.RMSNorm(epsilon=1e-6, dtype=cfg.dtype, name="k_norm")(k_BTNH)
    if cfg.pos_emb == "rope":
      pos_BT = jnp.arange(T)[None] if positions_BT is None else positions_BT
      q_BTNH, k_BTNH = rotate(q_BTNH, pos_BT), rotate(k_BTNH, pos_BT)
    if positions_BT is not None:
      # Cached decoding: a token's slot is its position; slots past a row's position are
      # masked out. (B, N, S, H), so the attention matmuls read the cache in place (on CPU a
      # (B, S, N, H) cache made attention ~20x slower with transposes). decoding.init_cache
      # makes it with one slot per token of its input, hence T.
      shape = (B, N, T, H)
      key = self.variable("cache", "key", jnp.zeros, shape, k_BTNH.dtype)
      value = self.variable("cache", "value", jnp.zeros, shape, v_BTNH.dtype)
      rows_B1 = jnp.arange(B)[:, None]
      key.value = key.value.at[rows_B1, :, positions_BT].set(k_BTNH)
      value.value = value.value.at[rows_B1, :, positions_BT].set(v_BTNH)
      scores_BNTS = jnp.einsum("bqnh,bnkh->bnqk", q_BTNH, key.value) / math.sqrt(H)
      slots_S = jnp.arange(key.value.shape[2])
      mask_B1TS = (slots_S[None, None, :] <= positions_BT[:, :, None])[:, None]
      scores_BNTS = jnp.where(mask_B1TS, scores_BNTS.astype(jnp.float32), -jnp.inf)
      probs_BNTS = jax.nn.softmax(scores_BNTS, axis=-1).astype(cfg.dtype)
      y_BTNH = jnp.einsum("bnqk,bnkh->bqnh", probs_BNTS, value.value)
    elif train and cfg.dropout > 0:
      # Fused attention kernels take no dropout: spell it out, as nanoGPT's slow path does.
      scores_BNTT = jnp.einsum("bqnh,bknh->bnqk", q_BTNH, k_BTNH) / math.sqrt(H)
      causal_TT = jnp.tril(jnp.ones((T, T), dtype=bool))
      scores_BNTT = jnp.where(causal_TT, scores_BNTT.astype(jnp.float32), -jnp.inf)
      probs_BNTT = jax.nn.softmax(scores_BNTT, axis=-1).astype(cfg.dtype)
      probs_BNTT = nn.Dropout(cfg.dropout)(probs_BNTT, deterministic=False)
      y_BTNH = jnp.einsum("bnqk,bknh->bqnh", probs_BNTT, v_BTNH)
    else:
      impl = attention.for_device(cfg.attention, cfg.dtype, H, jax.devices()[0])
      y_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTNH, v_BTNH, is_causal=True,
                                            implementation=impl)
    return _residual_out(cfg, y_BTNH.reshape(B, T, D), train)


class MLP(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_BTD: jax.Array, *, train: bool) -> jax.Array:
    cfg = self.config
    D = x_BTD.shape[-1]
    h_BTF = nn.Dense(4 * D, use_bias=cfg.bias, dtype=cfg.dtype, kernel_init=_normal(0.02),
                     name="c_fc")(x_BTD)
    if cfg.mlp_act == "relu2":
      h_BTF = jnp.square(nn.relu(h_BTF))
    else:
      h_BTF = nn.gelu(h_BTF, approximate=cfg.gelu_approximate)
    return _residual_out(cfg, h_BTF, train)


class Block(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_BTD: jax.Array, train: bool,
               positions_BT: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    x_BTD = x_BTD + CausalSelfAttention(cfg, name="attn")(_norm(cfg, "ln_1")(x_BTD), train=train,
                                                          positions_BT=positions_BT)
    return x_BTD + MLP(cfg, name="mlp")(_norm(cfg, "ln_2")(x_BTD), train=train)


class GPT(nn.Module):
  """GPT-2's trunk, read by one method per purpose: `__call__` (logits), `loss` (nanoGPT's),
  `token_losses` (evaluation), `next_logits` (sampling); `model.apply(..., method=GPT.loss)`."""

  config: GPTConfig
  rows_on: jax.sharding.Mesh | None = None  # where XLA splits the rows (fsdp): see head_loss

  @nn.compact
  def trunk(self, idx_BT: jax.Array, *, train: bool = False,
            positions_BT: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The final-normed hidden states (B, T, D) and the LM head's matrix (V, D).

    `positions_BT` (each < block_size) switches to cached decoding: the tokens
    sit at those positions and attend to every cache slot up to their own.
    """
    cfg = self.config
    T = idx_BT.shape[1]
    if T > cfg.block_size:
      raise ValueError(f"sequence length {T} exceeds block_size {cfg.block_size}")
    # The residual stream stays float32 whatever `dtype` (as under nanoGPT's autocast): the
    # embeddings are looked up in float32 and each block's output is added to it in float32.
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=_normal(0.02), name="wte")
    # Under fsdp the lookup takes the table whole, as XLA gathers it anyway: its gradient is
    # then each device's own scatter, reduced once. Left to XLA, the scatter went into the
    # split sum of the gradients, gathered whole (float32) for it in every micro-batch:
    # gpt2_124m on 8 H100s sent 12.57 GiB a device per iteration, now 10.56.
    if self.rows_on is None:
      x_BTD = wte(idx_BT)
    else:
      whole = jax.sharding.NamedSharding(self.rows_on, jax.sharding.PartitionSpec())
      x_BTD = jnp.take(jax.lax.with_sharding_constraint(wte.embedding, whole), idx_BT, axis=0)
    if cfg.pos_emb == "learned":
      wpe = nn.Embed(cfg.block_size, cfg.n_embd, embedding_init=_normal(0.02), name="wpe")
      x_BTD = x_BTD + wpe(jnp.arange(T)[None] if positions_BT is None else positions_BT)
    x_BTD = nn.Dropout(cfg.dropout)(x_BTD, deterministic=not train)
    block = Block
    if cfg.remat != "none" and positions_BT is None:
      block = nn.remat(Block, static_argnums=(2,), policy=_REMAT_SAVEABLE[cfg.remat])
    for i in range(cfg.n_layer):
      x_BTD = block(cfg, name=f"h_{i}")(x_BTD, train, positions_BT)
    x_BTD = _norm(cfg, "ln_f")(x_BTD)
    if cfg.tie_embeddings:  # weight tying: the LM head is the token embedding
      return x_BTD, wte.embedding
    init = nn.initializers.zeros if cfg.zero_init_projections else _normal(0.02)
    head = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=init, name="lm_head")
    return x_BTD, head.embedding

  def __call__(self, idx_BT: jax.Array, *, train: bool = False) -> jax.Array:
    """Next-token logits (B, T, V), float32."""
    return self._logits(*self.trunk(idx_BT, train=train))

  def loss(self, idx_BT: jax.Array, targets_BT: jax.Array, *, train: bool = False) -> jax.Array:
    """Mean next-token cross-entropy of `targets_BT`, float32."""
    cfg = self.config
    x_BTD, head_VD = self.trunk(idx_BT, train=train)
    if cfg.loss_chunk_size:
      return head_loss.mean_cross_entropy(x_BTD.reshape(-1, cfg.n_embd), head_VD,
                                          targets_BT.reshape(-1), chunk_size=cfg.loss_chunk_size,
                                          dtype=cfg.dtype, softcap=cfg.logit_softcap,
                                          rows_on=self.rows_on)
    return cross_entropy(self._logits(x_BTD, head_VD), targets_BT)

  def token_losses(self, idx_BT: jax.Array, scored_BS: jax.Array,
                   targets_BS: jax.Array) -> jax.Array:
    """The loss (B, S) of the predictions at positions `scored_BS` of `targets_BS`.

    The head runs on the S scored positions of a row alone: most of an
    evaluation row is context, and the head is most of a small model's FLOPs.
    """
    cfg = self.config
    x_BTD, head_VD = self.trunk(idx_BT)
    x_ND = jnp.take_along_axis(x_BTD, scored_BS[:, :, None], axis=1).reshape(-1, cfg.n_embd)
    return head_loss.token_cross_entropy(
        x_ND, head_VD, targets_BS.reshape(-1), chunk_size=cfg.loss_chunk_size or len(x_ND),
        dtype=cfg.dtype, softcap=cfg.logit_softcap, rows_on=self.rows_on
    ).reshape(targets_BS.shape)

  def next_logits(self, idx_BT: jax.Array, last_B: jax.Array,
                  positions_BT: jax.Array | None = None) -> jax.Array:
    """Logits (B, V) of position `last_B` of each row: all that sampling reads.

    With `positions_BT` the tokens go through the KV cache (the mutable
    'cache' collection made by `decoding.init_cache`) instead of the whole context;
    positions must be below the cache's length (decoding.generate keeps them
    there): inside jit, one past it is not caught.
    """
    x_BTD, head_VD = self.trunk(idx_BT, positions_BT=positions_BT)
    x_B1D = jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)
    return self._logits(x_B1D, head_VD)[:, 0]

  def _logits(self, x_BTD: jax.Array, head_VD: jax.Array) -> jax.Array:
    """The head in the activation dtype (as `nn.Embed.attend`), soft-capped, in float32."""
    dtype = self.config.dtype
    logits_BTV = jnp.dot(x_BTD.astype(dtype), head_VD.astype(dtype).T).astype(jnp.float32)
    if self.config.logit_softcap:
      logits_BTV = head_loss.softcap(logits_BTV, self.config.logit_softcap)
    return logits_BTV


def cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array) -> jax.Array:
  """Mean next-token loss in float32."""
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BTV.astype(jnp.float32), targets_BT)
  return losses_BT.mean()


@functools.partial(jax.jit, static_argnums=0)  # compiled once per model, not at every call
def init_params(model: GPT, rng: jax.Array) -> dict:
  """Float32 params with nanoGPT's init, as a plain pytree."""
  dummy_BT = jnp.zeros((1, model.config.block_size), dtype=jnp.int32)
  return model.init(rng, dummy_BT)["params"]


def count_params(params: dict, *, non_embedding: bool = True) -> int:
  """Parameter count; by default nanoGPT's printed one, without the lookup-only embeddings.

  That leaves out the position embeddings but keeps the token embedding, which
  is also the LM head (an untied model's is a lookup alone, and is left out
  too); biases and norm scales stay in. 6 x this count, plus the attention's,
  is nanoGPT's FLOPs per trained token (summary.flops_per_token).
  """
  total = sum(p.size for p in jax.tree.leaves(params))
  if non_embedding:
    embeddings = ["wpe"] + (["wte"] if "lm_head" in params else [])
    total -= sum(params[name]["embedding"].size for name in embeddings if name in params)
  return total

