"""The GPT's architecture, init and loss as nanoGPT defines them."""

from __future__ import annotations

import collections
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import recipe, tiny_gpt, tiny_model
from flax import traverse_util

from jaxgpt import defaults
from jaxgpt.model import GPT, GPTConfig, count_params, cross_entropy, init_params


def abstract_params(config) -> dict:
  model = GPT(GPTConfig.from_config(config))
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))


def test_gpt2_124m_parameter_count():
  params = abstract_params(recipe("gpt2_124m"))
  assert count_params(params, non_embedding=False) == 124_373_760
  assert count_params(params) == 124_373_760 - 1024 * 768  # nanoGPT leaves out wpe


def test_fineweb_40m_parameter_count():
  params = abstract_params(recipe("fineweb_40m"))
  d, layers, vocab = 384, 12, 50304
  expected = vocab * d + layers * (12 * d * d + 2 * d) + d  # no biases, tied head
  assert count_params(params) == expected
  assert 40e6 < expected < 41e6


@pytest.mark.slow
def test_init_loss_of_fineweb_40m_is_about_10_9():
  config = recipe("fineweb_40m")
  config.dtype = "float32"
  model = GPT(GPTConfig.from_config(config))
  params = init_params(model, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 257), 0, 50257)
  loss = float(cross_entropy(model.apply({"params": params}, tokens[:, :-1]), tokens[:, 1:]))
  assert math.log(50304) < loss
  assert abs(loss - 10.9) < 0.1, loss
  # The training loss (fused head, in chunks) is the same number.
  fused = model.apply({"params": params}, tokens[:, :-1], tokens[:, 1:], method=GPT.loss)
  assert float(fused) == pytest.approx(loss, abs=1e-5)


def test_init_follows_nanogpt():
  config = recipe("gpt2_124m")
  config.n_layer = 4
  model = GPT(GPTConfig.from_config(config))
  params = init_params(model, jax.random.PRNGKey(0))
  assert np.std(params["wte"]["embedding"]) == pytest.approx(0.02, rel=0.02)
  assert np.std(params["h_0"]["mlp"]["c_fc"]["kernel"]) == pytest.approx(0.02, rel=0.02)
  residual_std = 0.02 / math.sqrt(2 * 4)
  assert np.std(params["h_0"]["attn"]["c_proj"]["kernel"]) == pytest.approx(residual_std, rel=0.02)
  assert np.std(params["h_0"]["mlp"]["c_proj"]["kernel"]) == pytest.approx(residual_std, rel=0.02)
  np.testing.assert_array_equal(params["h_0"]["ln_1"]["scale"], 1.0)
  assert "bias" not in params["h_0"]["ln_1"]
  # An equal model's init (the next test's) is not traced again: 0.2 s each time, before.
  compiled = init_params._cache_size()
  again = init_params(GPT(GPTConfig.from_config(config)), jax.random.PRNGKey(0))
  assert init_params._cache_size() == compiled
  np.testing.assert_array_equal(again["wte"]["embedding"], params["wte"]["embedding"])


def test_biases_are_zero_at_init_when_enabled():
  _, params = tiny_gpt(bias=True)
  np.testing.assert_array_equal(params["h_0"]["attn"]["c_attn"]["bias"], 0.0)
  np.testing.assert_array_equal(params["h_0"]["ln_2"]["bias"], 0.0)


def test_later_tokens_cannot_change_earlier_logits():
  model, params = tiny_gpt()
  tokens = jax.random.randint(jax.random.PRNGKey(2), (1, 16), 0, 64)
  changed = tokens.at[0, 9:].set((tokens[0, 9:] + 1) % 64)
  a = model.apply({"params": params}, tokens)
  b = model.apply({"params": params}, changed)
  np.testing.assert_allclose(a[0, :9], b[0, :9], rtol=1e-6, atol=1e-6)
  assert not np.allclose(a[0, 9:], b[0, 9:])


def test_the_tied_head_trains_the_embedding_as_both_lookup_and_head():
  """nanoGPT ties lm_head to wte: the embedding's gradient is the sum of its gradients as the
  lookup and as the head, those of an untied model whose head holds the same matrix."""
  tied, params = tiny_gpt()
  untied = GPT(tiny_model(tie_embeddings=False))
  tokens = jax.random.randint(jax.random.PRNGKey(7), (2, 17), 0, 64)
  grad = lambda model, p: jax.jit(jax.grad(lambda p: model.apply(
      {"params": p}, tokens[:, :-1], tokens[:, 1:], method=GPT.loss)))(p)
  g_tied = grad(tied, params)
  g_untied = grad(untied, {**params, "lm_head": params["wte"]})
  np.testing.assert_allclose(g_tied["wte"]["embedding"], g_untied["wte"]["embedding"]
                             + g_untied["lm_head"]["embedding"], rtol=1e-5, atol=1e-8)


def test_layer_norms_add_nanogpt_s_epsilon_to_the_variance():
  """nanoGPT's LayerNorm is torch's, eps=1e-5 (flax's default is 1e-6): on embeddings of small
  variance (~1e-7, scaled down) the two give outputs 3 times apart. Each norm's input and output
  are compared with the formula (scale 1 and no bias at init), sown from a jitted apply (an
  eager one took twice as long)."""
  model, params = tiny_gpt()
  params = {**params, **{name: {"embedding": params[name]["embedding"] * 1e-2}
                         for name in ("wte", "wpe")}}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
      context.module.sow("intermediates", "in_out", (args[0], out))
    return out

  @jax.jit
  def norms(params, tokens_BT):
    with nn.intercept_methods(record):
      return model.apply({"params": params}, tokens_BT, mutable="intermediates")[1]

  sown = traverse_util.flatten_dict(norms(params, jax.random.randint(
      jax.random.PRNGKey(4), (2, 16), 0, 64)))  # each norm's one (input, output)
  seen = [(np.asarray(x), np.asarray(y)) for ((x, y),) in sown.values()]
  assert len(seen) == 2 * model.config.n_layer + 1  # ln_1, ln_2 of each block, ln_f
  for x, y in seen:
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


def test_dropout_only_in_training():
  model, params = tiny_gpt(dropout=0.5)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 16), 0, 64)
  eval_a = model.apply({"params": params}, tokens)
  eval_b = model.apply({"params": params}, tokens)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = model.apply({"params": params}, tokens, train=True,
                        rngs={"dropout": jax.random.PRNGKey(0)})
  train_b = model.apply({"params": params}, tokens, train=True,
                        rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(train_a, eval_a)
  assert not np.allclose(train_a, train_b)


def test_dropout_sits_where_nanogpt_s_does():
  """nanoGPT drops the embeddings' sum, each attention's probabilities and each block's two
  c_proj outputs: 1 + 3 n_layer dropouts live in training, none in evaluation."""
  model, params = tiny_gpt(dropout=0.5)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 16), 0, 64)

  def live_dropouts(train: bool) -> dict[str, int]:
    """The dropouts that drop something, counted by the part of a block that holds them."""
    live = collections.Counter()

    def count(next_fun, args, kwargs, context):
      module = context.module
      if (isinstance(module, nn.Dropout) and context.method_name == "__call__"
          and not kwargs.get("deterministic", module.deterministic)):
        live[module.path[-2] if len(module.path) > 2 else ""] += 1
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(count):
      model.apply({"params": params}, tokens, train=train, rngs={"dropout": jax.random.PRNGKey(0)})
    return dict(live)

  n_layer = model.config.n_layer
  assert live_dropouts(True) == {"": 1, "attn": 2 * n_layer, "mlp": n_layer}
  assert live_dropouts(False) == {}


def test_training_attention_with_dropout_matches_fused_attention():
  # With a vanishing rate nothing is dropped: the explicit attention used for
  # dropout must then agree with jax.nn.dot_product_attention.
  model, params = tiny_gpt(dropout=1e-9)
  tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 16), 0, 64)
  explicit = model.apply({"params": params}, tokens, train=True,
                         rngs={"dropout": jax.random.PRNGKey(0)})
  fused = model.apply({"params": params}, tokens)
  np.testing.assert_allclose(explicit, fused, rtol=1e-5, atol=1e-5)


def test_gelu_option_selects_tanh_approximation():
  exact_model, params = tiny_gpt()
  tanh_model = GPT(tiny_model(gelu_approximate=True))
  tokens = jax.random.randint(jax.random.PRNGKey(5), (1, 16), 0, 64)
  exact = exact_model.apply({"params": params}, tokens)
  tanh = tanh_model.apply({"params": params}, tokens)
  assert not np.array_equal(exact, tanh)
  np.testing.assert_allclose(exact, tanh, atol=1e-2)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model, params = tiny_gpt(dtype="bfloat16")
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  tokens = jax.random.randint(jax.random.PRNGKey(6), (1, 16), 0, 64)
  logits = model.apply({"params": params}, tokens)
  assert logits.dtype == jnp.float32
  f32_model = GPT(tiny_model())
  np.testing.assert_allclose(logits, f32_model.apply({"params": params}, tokens), atol=5e-2)


def test_bfloat16_compute_keeps_the_residual_stream_float32():
  """As under nanoGPT's autocast: matmuls in bfloat16, their outputs added to a float32 stream."""
  model, params = tiny_gpt(dtype="bfloat16")
  tokens = jnp.zeros((1, 16), jnp.int32)
  _, state = model.apply({"params": params}, tokens, capture_intermediates=True,
                         mutable=["intermediates"])
  captured = state["intermediates"]
  stream = [captured[name]["__call__"][0] for name in ("wte", "h_0", "h_1")]
  assert [x.dtype for x in stream] == [jnp.float32] * 3
  qkv = captured["h_0"]["attn"]["c_attn"]["__call__"][0]
  assert qkv.dtype == jnp.bfloat16


def test_sequence_longer_than_block_size_is_rejected():
  model, params = tiny_gpt()
  with pytest.raises(ValueError, match="block_size 16"):
    model.apply({"params": params}, jnp.zeros((1, 17), jnp.int32))


def test_default_config_is_valid():
  defaults.validate(defaults.get_config())  # raises on an invalid value
