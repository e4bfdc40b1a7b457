"""The modern recipe's changes: each off by default, each usable alone, all of them together."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import (
  iter_losses,
  recipe,
  records,
  restore_state,
  run_python,
  setup_of,
  tiny_config,
  tiny_gpt,
  tiny_model,
  write_config_file,
)

import launch
from jaxgpt import defaults, head_loss, model, optim, summary, train, train_step
from jaxgpt.bench import recipes
from jaxgpt.errors import UserError
from jaxgpt.inference import decoding
from jaxgpt.interop import gpt2, weights
from jaxgpt.model import GPT, GPTConfig

MODERN = dict(defaults.MODERN)
SINGLES = [{key: value} for key, value in MODERN.items()]


def trained_like(params: dict) -> dict:
  """Params moved off the init, where zero projections and a zero head would hide everything."""
  keys = iter(jax.random.split(jax.random.PRNGKey(2), len(jax.tree.leaves(params))))
  return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape), params)


MODEL_KEYS = {k: v for k, v in MODERN.items() if k not in ("optimizer", "lr_schedule")}


def test_every_modern_key_is_off_by_default():
  c = defaults.get_config()
  assert all(c[key] != value for key, value in MODERN.items())
  assert gpt2.differences(GPTConfig.from_config(c)) == []


@pytest.mark.parametrize("overrides", [pytest.param(o, marks=pytest.mark.slow) for o in SINGLES]
                         + [MODERN], ids=lambda o: ",".join(o))
def test_each_change_alone_and_all_together_train(tmp_path, token_dir, overrides):
  config = tiny_config(tmp_path, token_dir, max_iters=12, eval_interval=12, lr_decay_iters=12,
                       learning_rate=3e-3, min_lr=3e-4, **overrides)
  losses = launch.run(config)
  first = records(config.out_dir, "eval")[0]["val_loss"]
  assert losses["val"] < first - 0.3, (first, losses)


def test_zero_projections_and_a_zero_head_start_at_exactly_ln_vocab():
  m, params = tiny_gpt(block_size=32, tie_embeddings=False, zero_init_projections=True)
  tokens = jnp.arange(33)[None] % 64
  loss = m.apply({"params": params}, tokens[:, :-1], tokens[:, 1:], method=GPT.loss)
  np.testing.assert_allclose(loss, math.log(64), rtol=1e-6)
  assert not jnp.any(params["h_0"]["attn"]["c_proj"]["kernel"])
  assert not jnp.any(params["h_1"]["mlp"]["c_proj"]["kernel"])


def test_untied_head_is_its_own_matrix_and_leaves_the_flop_count():
  _m, params = tiny_gpt(block_size=32, tie_embeddings=False)
  assert params["lm_head"]["embedding"].shape == params["wte"]["embedding"].shape
  tied = model.count_params(tiny_gpt(block_size=32)[1])
  # The untied head replaces the tied one in the matmuls; the token embedding is a lookup.
  assert model.count_params(params) == tied


@pytest.mark.parametrize("overrides", [MODEL_KEYS, {"pos_emb": "rope", "qk_norm": True}],
                         ids=["modern", "rope+qk_norm"])
def test_later_tokens_cannot_change_earlier_logits(overrides):
  m, params = tiny_gpt(block_size=32, **overrides)
  params = trained_like(params)
  a = jnp.arange(20)[None] % 64
  b = a.at[0, 12:].set(7)
  la, lb = (m.apply({"params": params}, x) for x in (a, b))
  np.testing.assert_allclose(la[0, :12], lb[0, :12], atol=1e-6)
  assert not np.allclose(la[0, 12:], lb[0, 12:])


def test_rotary_keeps_lengths_and_depends_only_on_the_distance():
  q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1, 1, 16))
  at = lambda x, p: model.rotate(x, jnp.array([[p]]))
  np.testing.assert_allclose(jnp.linalg.norm(at(q, 9)), jnp.linalg.norm(q), rtol=1e-6)
  score = lambda m, n: jnp.sum(at(q, m) * at(k, n))
  np.testing.assert_allclose(score(5, 2), score(103, 100), rtol=1e-5)
  assert not np.isclose(score(5, 2), score(5, 3))


def test_rope_model_has_no_position_embedding():
  _, params = tiny_gpt(block_size=32, pos_emb="rope")
  assert "wpe" not in params


def test_relu2_mlp_squares_the_positive_part():
  cfg = tiny_model(n_embd=8, n_layer=1, mlp_act="relu2")
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 8))
  mlp = model.MLP(cfg)
  params = mlp.init(jax.random.PRNGKey(1), x, train=False)["params"]
  h = jnp.maximum(x @ params["c_fc"]["kernel"], 0.0) ** 2
  np.testing.assert_allclose(mlp.apply({"params": params}, x, train=False),
                             h @ params["c_proj"]["kernel"], rtol=1e-5, atol=1e-6)


def test_softcap_bounds_the_logits():
  m, params = tiny_gpt(block_size=32, logit_softcap=2.0)
  params["wte"]["embedding"] = params["wte"]["embedding"] * 1000
  logits = m.apply({"params": params}, jnp.arange(10)[None])
  uncapped = GPT(dataclasses.replace(m.config, logit_softcap=0.0))
  assert jnp.abs(uncapped.apply({"params": params}, jnp.arange(10)[None])).max() > 100
  assert 1.9 < jnp.abs(logits).max() <= 2.0


@pytest.mark.parametrize("cap", [0.0, 3.0])
def test_chunked_head_loss_and_its_gradients_equal_plain_autodiff(cap):
  kx, ke, kt = jax.random.split(jax.random.PRNGKey(1), 3)
  x_ND = jax.random.normal(kx, (37, 16))
  embedding_VD = jax.random.normal(ke, (50, 16))
  targets_N = jax.random.randint(kt, (37,), 0, 50)

  def plain(x, e):
    logits = x @ e.T
    logits = head_loss.softcap(logits, cap) if cap else logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets_N).mean()

  def chunked(x, e):
    return head_loss.mean_cross_entropy(x, e, targets_N, chunk_size=8, dtype="float32",
                                        softcap=cap)

  (v1, g1), (v2, g2) = (jax.value_and_grad(f, argnums=(0, 1))(x_ND, embedding_VD)
                        for f in (plain, chunked))
  np.testing.assert_allclose(v2, v1, rtol=1e-6)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_model_loss_with_and_without_chunks_agree_for_the_modern_model():
  m, params = tiny_gpt(block_size=32, **MODEL_KEYS)
  params = trained_like(params)
  tokens = jnp.arange(2 * 33).reshape(2, 33) % 64
  plain = GPT(dataclasses.replace(m.config, loss_chunk_size=0))
  f = lambda mm: jax.value_and_grad(lambda p: train_step.loss(mm, p, tokens, None))(params)
  (v1, g1), (v2, g2) = f(plain), f(m)
  np.testing.assert_allclose(v2, v1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_cached_decoding_with_rotary_positions_equals_recomputing():
  m, params = tiny_gpt(block_size=32, **MODEL_KEYS)
  params = trained_like(params)
  params["lm_head"]["embedding"] = params["lm_head"]["embedding"] * 50  # far-apart logits
  prompts = [[1, 2, 3], list(range(5, 25))]
  out = decoding.generate(m, params, prompts, jax.random.PRNGKey(0), max_new_tokens=30,
                          temperature=0.0)
  for p, row in zip(prompts, out):
    ref = decoding.generate_recompute(m, params, jnp.array([p]), jax.random.PRNGKey(0),
                                      max_new_tokens=30, temperature=0.0)
    assert row.tolist() == np.asarray(ref[0]).tolist()


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
  _, params = tiny_gpt(block_size=32, **MODEL_KEYS)
  groups = optim.optimizer_groups(params)
  assert groups["h_0"]["attn"]["c_attn"]["kernel"] == "muon"
  assert groups["h_1"]["mlp"]["c_proj"]["kernel"] == "muon"
  for path in (("wte", "embedding"), ("lm_head", "embedding"), ("ln_f", "scale")):
    assert groups[path[0]][path[1]] == "adamw"
  assert groups["h_0"]["attn"]["q_norm"]["scale"] == "adamw"


def test_muon_momentum_warms_up_and_its_update_is_orthogonal():
  c = defaults.get_config()
  c.update(optimizer="muon", grad_clip=0.0, muon_learning_rate=1.0, warmup_iters=0,
           decay_lr=False, muon_momentum_start=0.85, muon_momentum=0.95,
           muon_momentum_warmup_iters=10)
  params = {"h_0": {"w": jnp.zeros((64, 64))}, "wte": {"embedding": jnp.zeros((8, 4))}}
  tx = optim.make_optimizer(defaults.view(optim.OptimConfig, c))
  state = tx.init(params)
  grads = {"h_0": {"w": jax.random.normal(jax.random.PRNGKey(0), (64, 64))},
           "wte": {"embedding": jnp.ones((8, 4))}}
  betas = []
  for _ in range(12):
    updates, state = tx.update(grads, state, params)
    inject = state.inner_states["muon"].inner_state[0]
    betas.append(float(inject.hyperparams["beta"]))
  np.testing.assert_allclose(betas[0], 0.85, rtol=1e-6)
  np.testing.assert_allclose(betas[5], 0.90, rtol=1e-6)
  np.testing.assert_allclose(betas[-1], 0.95, rtol=1e-6)
  # Newton-Schulz leaves singular values near 1 (in [0.7, 1.2] for these coefficients).
  singular = jnp.linalg.svd(updates["h_0"]["w"], compute_uv=False)
  assert 0.6 < float(singular.min()) and float(singular.max()) < 1.3


def test_muon_momentum_without_warmup_is_the_momentum_from_the_first_step():
  c = defaults.get_config()
  c.update(optimizer="muon", grad_clip=0.0, muon_momentum_start=0.85, muon_momentum=0.95,
           muon_momentum_warmup_iters=0)
  tx = optim.make_optimizer(defaults.view(optim.OptimConfig, c))
  params = {"h_0": {"w": jnp.zeros((8, 8))}}
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update({"h_0": {"w": jnp.ones((8, 8))}}, state, params)
    inject = state.inner_states["muon"].inner_state[0]
    np.testing.assert_allclose(float(inject.hyperparams["beta"]), 0.95, rtol=1e-6)
  assert summary.schedule(defaults.view(optim.OptimConfig, c), 100).endswith(" momentum 0.95")


def test_muon_learning_rate_follows_the_schedule_with_its_own_peak():
  c = defaults.get_config()
  c.update(learning_rate=1e-3, min_lr=1e-4, muon_learning_rate=0.02, warmup_iters=10,
           lr_decay_iters=100, max_iters=100)
  o = defaults.view(optim.OptimConfig, c)
  adamw, muon = optim.lr_schedule(o), optim.lr_schedule(o, peak=0.02)
  for it in (0, 5, 50, 99, 200):
    np.testing.assert_allclose(muon(it) / adamw(it), 20.0, rtol=1e-5)


def test_wsd_schedule_warms_up_holds_then_decays_linearly():
  c = defaults.get_config()
  c.update(lr_schedule="wsd", learning_rate=1e-3, min_lr=1e-4, warmup_iters=10,
           max_iters=110, wsd_decay_frac=0.2)
  o = defaults.view(optim.OptimConfig, c)
  lr = optim.lr_schedule(o)
  np.testing.assert_allclose(lr(0), 1e-3 / 11, rtol=1e-6)  # nanoGPT's warmup
  for it in (10, 50, 90):  # stable until the last 20 of the 100 iterations after warmup
    np.testing.assert_allclose(lr(it), 1e-3, rtol=1e-6)
  for it in (92, 95, 100, 105):  # a straight line from 90 to 110 (not cosine's, which meets it
    np.testing.assert_allclose(lr(it), 1e-3 - (it - 90) / 20 * 9e-4, rtol=1e-6)  # at 100)
  np.testing.assert_allclose(lr(110), 1e-4, rtol=1e-6)
  np.testing.assert_allclose(lr(500), 1e-4, rtol=1e-6)
  host = optim.lr_schedule(o, np)
  for it in (0, 10, 95, 110):
    np.testing.assert_allclose(host(it), lr(it), rtol=1e-6)
  c.wsd_decay_frac = 1e-17  # a decay no float can start before lr_decay_iters: held, then min_lr
  for schedule in (optim.lr_schedule(defaults.view(optim.OptimConfig, c), xp)
                   for xp in (jnp, np)):
    np.testing.assert_allclose([schedule(it) for it in (10, 109, 110)], [1e-3, 1e-3, 1e-4],
                               rtol=1e-6)


@pytest.mark.parametrize("overrides,message", [
    ({"pos_emb": "alibi"}, "config.pos_emb='alibi': must be one of ('learned', 'rope')"),
    ({"optimizer": "sgd"}, "config.optimizer='sgd'"),
    ({"logit_softcap": -1.0}, "config.logit_softcap=-1.0"),
    ({"pos_emb": "rope", "n_embd": 30, "n_head": 2}, "rope needs an even head size; n_embd/n_head is 15"),
    ({"lr_schedule": "wsd", "wsd_decay_frac": 0.0}, "config.wsd_decay_frac=0.0: must be in (0, 1]"),
    ({"optimizer": "muon", "muon_momentum": 1.0}, "config.muon_momentum=1.0: must be in [0, 1)"),
])
def test_bad_values_are_refused_by_name(overrides, message):
  c = defaults.get_config()
  c.update(overrides)
  with pytest.raises(UserError, match=None) as e:
    defaults.validate(c)
  assert message in str(e.value)


def test_gpt2_weights_are_refused_for_a_modern_config(tmp_path):
  c = defaults.get_config()
  c.update(init_from="gpt2", pos_emb="rope")
  with pytest.raises(UserError, match="loads GPT-2-architecture weights; this config has "
                                      "pos_emb=rope"):
    weights.for_training(c)


def test_export_refuses_a_modern_model_and_says_why(tmp_path):
  c = defaults.get_config()
  c.update(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64, pos_emb="rope",
           mlp_act="relu2")
  params = setup_of(c).new_state().params
  with pytest.raises(UserError, match=r"not GPT-2's architecture \(pos_emb=rope, mlp_act=relu2\)"):
    gpt2.export(params, GPTConfig.from_config(c), str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_a_modern_run_samples_and_its_export_is_refused_in_one_line(tmp_path, token_dir):
  config_file = write_config_file(tmp_path, token_dir, max_iters=2, eval_interval=2,
                                  lr_decay_iters=2, warmup_iters=0, vocab_size=50304, **MODERN)
  assert run_python("launch.py", f"--config={config_file}").returncode == 0
  r = run_python("-m", "jaxgpt.sample", f"--out_dir={tmp_path / 'run'}", "--start=A",
                 "--num_samples=2", "--max_new_tokens=40", "--top_k=20")  # past block_size 16
  assert r.returncode == 0, r.stderr
  assert r.stdout.count("---------------\n") == 2
  r = run_python("-m", "jaxgpt.export", f"--out_dir={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}")
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith("error: this run's model is not GPT-2's")


@pytest.mark.slow
def test_resume_of_the_modern_recipe_continues_bit_exactly(tmp_path, token_dir):
  kw = {"eval_interval": 4, "lr_decay_iters": 8, **MODERN}
  unbroken = tiny_config(tmp_path / "a", token_dir, max_iters=8, **kw)
  train.train(unbroken)
  train.train(tiny_config(tmp_path / "b", token_dir, max_iters=4, **kw))
  resumed = tiny_config(tmp_path / "b", token_dir, max_iters=8, init_from="resume", **kw)
  train.train(resumed)
  assert iter_losses(unbroken.out_dir) == iter_losses(resumed.out_dir)
  for a, b in zip(jax.tree.leaves(restore_state(unbroken, 8)[0]),
                  jax.tree.leaves(restore_state(resumed, 8)[0])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["fineweb_40m_modern", "gpt2_124m_modern"])
def test_modern_recipes_keep_their_base_shape_data_and_schedule(name):
  """What the recipe's docstring and comments say: the base's depth, width, data and tokens
  per iteration; AdamW's rate 4x the base's, Muon's 0.02."""
  c, base = recipe(name), recipe(name.removesuffix("_modern"))
  defaults.validate(c)
  for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
              "gradient_accumulation_steps", "max_iters", "warmup_iters", "dataset", "data_dir"):
    assert c[key] == base[key], key
  assert all(c[key] == value for key, value in MODERN.items())
  assert c.learning_rate == 4 * base.learning_rate and c.min_lr == c.learning_rate / 10
  assert c.muon_learning_rate == 0.02
  assert c.out_dir != base.out_dir


def test_plan_counts_the_modern_model_and_its_flops():
  c = recipe("fineweb_40m_modern")
  p = summary.summarize(c)
  base = summary.summarize(recipe("fineweb_40m"))
  # No position embeddings and an untied head: the matmul params are the nanoGPT model's,
  # plus a query and a key gain per layer.
  assert p.n_params == base.n_params + 12 * 2 * 64
  # In all: no position embedding, a head of its own, and a query and a key gain per layer.
  assert p.n_params_total == base.n_params_total - 1024 * 384 + 50304 * 384 + 12 * 2 * 64
  assert p.flops_per_token == 6 * p.n_params + 12 * 12 * 6 * 64 * 1024


def test_the_launch_log_spells_out_the_wsd_schedule_and_muon():
  c = recipe("fineweb_40m_modern")
  assert summary.schedule(defaults.view(optim.OptimConfig, c), c.max_iters) == (
      "learning rate: warmup over 700 iterations to 0.002, held until iteration 16,140, then "
      "linear to 0.0002 at iteration 20,000 (max_iters=20,000); Muon's matrices at 0.02 on the "
      "same schedule, momentum 0.85 to 0.95 over 300 iterations")


@pytest.mark.slow
def test_compare_recipes_writes_a_table_and_curves(tmp_path, token_dir):
  base = recipes.base_config(token_dir, str(tmp_path / "compare"), max_iters=8)
  base.update(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, vocab_size=96,
              eval_iters=2)
  rows = recipes.compare(base, ["nanogpt", "modern"], [1.0])
  assert [r["variant"] for r in rows] == ["nanogpt", "modern"]
  assert rows[0]["tokens_to_target_ratio"] == 1.0 and rows[0]["step_time_ratio"] == 1.0
  assert rows[1]["muon_learning_rate"] == recipes.MODERN_LRS["muon_learning_rate"]
  text = recipes.write(rows, base.out_dir)
  assert text.count("\n") == 3 and "| modern |" in text
  assert (tmp_path / "compare" / "curves.png").stat().st_size > 0
  assert not (tmp_path / "compare" / "nanogpt" / "checkpoints").exists()
  # A finished run of the same variant is reused (one from before comparisons took auto_resume
  # too, and its checkpoints, which a stop before their removal left, removed); another config
  # in its place is refused.
  config_json = tmp_path / "compare" / "nanogpt" / "config.json"
  config_json.write_text(json.dumps({**json.loads(config_json.read_text()), "auto_resume": False}))
  (tmp_path / "compare" / "nanogpt" / "checkpoints").mkdir()
  again = recipes.compare(base, ["nanogpt"], [1.0])
  assert again[0]["final_val_loss"] == rows[0]["final_val_loss"]
  assert not (tmp_path / "compare" / "nanogpt" / "checkpoints").exists()
  base.max_iters = 6
  with pytest.raises(UserError, match="is not a run of this variant's config"):
    recipes.compare(base, ["nanogpt"], [1.0])


@pytest.mark.slow
def test_a_variant_stopped_by_a_signal_stops_the_comparison(tmp_path, token_dir, monkeypatch):
  base = recipes.base_config(token_dir, str(tmp_path / "compare"), max_iters=8)
  base.update(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, vocab_size=96,
              eval_iters=2)
  real_train = recipes.train_variant

  def stopped_at_4(config):  # as a SIGTERM at iteration 4 leaves a run
    short = ml_collections.ConfigDict(config.to_dict())
    short.max_iters = 4
    return real_train(short)

  monkeypatch.setattr(recipes, "train_variant", stopped_at_4)
  with pytest.raises(UserError, match="stopped before max_iters=8; the comparison stops here "
                                      r"\(run the same command again to go on\)"):
    recipes.compare(base, ["nanogpt", "modern"], [1.0])
  assert not (tmp_path / "compare" / "modern").exists()


def test_tokens_to_target_interpolates_between_evaluations():
  evals = [{"tokens": 0, "val_loss": 5.0}, {"tokens": 100, "val_loss": 4.0},
           {"tokens": 200, "val_loss": 3.0}]
  assert recipes.tokens_to_target(evals, 3.5) == 150.0
  assert recipes.tokens_to_target(evals, 5.0) == 0.0
  assert recipes.tokens_to_target(evals, 3.0) == 200.0  # the baseline's own final val loss
  assert recipes.tokens_to_target(evals, 2.0) is None


def test_every_architecture_key_export_cannot_hold_is_refused():
  held = set(gpt2.GPT2_KEYS)
  for key in set(model.ARCHITECTURE) - held:
    default = getattr(GPTConfig(), key)
    other = (not default if isinstance(default, bool) else
             default + "_x" if isinstance(default, str) else default + 1.0)
    assert gpt2.differences(GPTConfig(**{key: other})) == [f"{key}={other}"]


def test_export_refuses_a_modern_run_before_reading_its_checkpoints(tmp_path):
  out_dir = tmp_path / "run"
  out_dir.mkdir()
  c = defaults.get_config()
  c.update(MODERN)
  (out_dir / "config.json").write_text(c.to_json_best_effort())  # no checkpoint to read
  r = run_python("-m", "jaxgpt.export", f"--out_dir={out_dir}", f"--out={tmp_path / 'hf'}")
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1].startswith("error: this run's model is not GPT-2's")


# The modern model against a reference written from the published definitions in PyTorch
# (float64), not from jaxgpt's code: the cap's formula, QK-norm before the rotation, the
# rotation's pairing (i with i + H/2) and base, RMSNorm's epsilon and gain, and the fused
# loss's gradients with an untied, capped head.
MODEL_KEYS = {k: v for k, v in MODERN.items() if k not in ("optimizer", "lr_schedule")}


def _torch_reference(params: dict, cfg, idx_BT: np.ndarray):
  """Logits from Llama's RMSNorm (eps 1e-6, times its gain), QK-norm then RoPE (HF Llama's
  rotate_half pairing, base 10000), ReLU², an untied head and cap * tanh(logits / cap)."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  tp = jax.tree.map(lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True), params)

  def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

  def rope(x):  # (B, T, N, H)
    H, T = x.shape[-1], x.shape[1]
    inv = 1.0 / 10000.0 ** (torch.arange(0, H, 2, dtype=torch.float64) / H)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
    cos, sin = (torch.cat([f(ang), f(ang)], -1)[None, :, None] for f in (torch.cos, torch.sin))
    return x * cos + torch.cat([-x[..., H // 2:], x[..., :H // 2]], -1) * sin

  B, T = idx_BT.shape
  D, N = cfg.n_embd, cfg.n_head
  x = tp["wte"]["embedding"][torch.tensor(idx_BT)]
  for i in range(cfg.n_layer):
    p = tp[f"h_{i}"]
    q, k, v = (a.reshape(B, T, N, D // N)
               for a in (rms(x, p["ln_1"]["scale"]) @ p["attn"]["c_attn"]["kernel"]).split(D, -1))
    q = rope(rms(q, p["attn"]["q_norm"]["scale"]))
    k = rope(rms(k, p["attn"]["k_norm"]["scale"]))
    y = F.scaled_dot_product_attention(*(a.transpose(1, 2) for a in (q, k, v)), is_causal=True)
    x = x + y.transpose(1, 2).reshape(B, T, D) @ p["attn"]["c_proj"]["kernel"]
    h = F.relu(rms(x, p["ln_2"]["scale"]) @ p["mlp"]["c_fc"]["kernel"]).square()
    x = x + h @ p["mlp"]["c_proj"]["kernel"]
  logits = rms(x, tp["ln_f"]["scale"]) @ tp["lm_head"]["embedding"].T
  return tp, cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)


@pytest.mark.parametrize("chunk", [0, 7])
def test_modern_model_matches_a_reference_written_from_the_papers(chunk):
  torch = pytest.importorskip("torch")
  m, params = tiny_gpt(block_size=16, **MODEL_KEYS)
  rng = np.random.default_rng(2)  # in numpy: JAX's op by op compiled a program for each shape
  params = jax.tree.map(lambda p: np.asarray(p) + np.float32(0.05) * rng.standard_normal(
      p.shape, np.float32), params)
  params["lm_head"]["embedding"] = params["lm_head"]["embedding"] * 40  # logits reach the cap
  m = GPT(dataclasses.replace(m.config, loss_chunk_size=chunk))
  idx = np.asarray(jax.random.randint(jax.random.PRNGKey(5), (3, 17), 0, 64), np.int64)
  tp, ref_logits = _torch_reference(params, m.config, idx[:, :-1])
  assert ref_logits.detach().abs().max().item() > 20  # deep in the cap's curve
  ref_loss = torch.nn.functional.cross_entropy(ref_logits.reshape(-1, 64),
                                               torch.tensor(idx[:, 1:]).reshape(-1))
  ref_loss.backward()

  # Jitted, as a run's step is: one program each, where op by op compiled one for every op.
  logits = jax.jit(m.apply)({"params": params}, jnp.asarray(idx[:, :-1]))
  np.testing.assert_allclose(logits, ref_logits.detach().numpy(), atol=1e-4)
  loss, grads = jax.jit(jax.value_and_grad(lambda p: m.apply(
      {"params": p}, jnp.asarray(idx[:, :-1]), jnp.asarray(idx[:, 1:]), method=GPT.loss)))(params)
  np.testing.assert_allclose(loss, ref_loss.item(), rtol=1e-6)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    ref = tp
    for key in path:
      ref = ref[key.key]
    ref = ref.grad.numpy()
    np.testing.assert_allclose(g, ref, atol=1e-5 * np.abs(ref).max(),
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("shape,scale", [((4, 16), 2.0), ((16, 4), 1.0)])
def test_muon_scales_a_wide_kernel_by_sqrt_fan_out_over_fan_in(shape, scale):
  """Flax kernels are (in, out): c_fc's (D, 4D) gets sqrt(4) = 2, c_proj's (4D, D) gets 1."""
  c = defaults.get_config()
  c.update(optimizer="muon", grad_clip=0.0, muon_learning_rate=1.0, warmup_iters=0,
           decay_lr=False, muon_momentum_warmup_iters=0)
  tx = optim.make_optimizer(defaults.view(optim.OptimConfig, c))
  params = {"h_0": {"w": jnp.zeros(shape)}}
  grads = {"h_0": {"w": jax.random.normal(jax.random.PRNGKey(0), shape)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  singular = jnp.linalg.svd(updates["h_0"]["w"], compute_uv=False)
  # Newton-Schulz leaves singular values in about [0.7, 1.2]; the scale multiplies them.
  assert 0.6 * scale < float(singular.min()) and float(singular.max()) < 1.3 * scale


def _newton_schulz5(g: np.ndarray) -> np.ndarray:
  """Keller Jordan's zeropower_via_newtonschulz5: Frobenius-normalised, wide side first,
  five steps of X <- aX + (bA + cA²)X, A = XXᵀ, with a, b, c = 3.4445, -4.7750, 2.0315."""
  a, b, c = 3.4445, -4.7750, 2.0315
  x = g.T if g.shape[0] > g.shape[1] else g
  x = x / (np.linalg.norm(x) + 1e-8)
  for _ in range(5):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if g.shape[0] > g.shape[1] else x


def test_muon_update_is_newton_schulz5_of_bias_corrected_nesterov_momentum():
  """Muon's whole step against numpy (float64): the momentum warmup, Nesterov with optax's
  bias correction (docs/design.md), Keller Jordan's quintic and the width scale. The
  singular-value bounds of the tests above would also hold for other coefficients or step
  counts (an optax release changing its defaults); this pins them."""
  c = defaults.get_config()
  c.update(optimizer="muon", grad_clip=0.0, muon_learning_rate=0.02, warmup_iters=0,
           decay_lr=False, muon_momentum_start=0.85, muon_momentum=0.95,
           muon_momentum_warmup_iters=4)
  tx = optim.make_optimizer(defaults.view(optim.OptimConfig, c))
  shapes = {"c_fc": (8, 24), "c_proj": (24, 8)}  # Flax kernels (in, out): scales sqrt(3), 1
  params = {"h_0": {k: jnp.zeros(s) for k, s in shapes.items()}}
  state = tx.init(params)
  rng = np.random.default_rng(0)
  mu = {k: np.zeros(s) for k, s in shapes.items()}
  for t in range(1, 7):
    grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
    updates, state = tx.update({"h_0": {k: jnp.asarray(g, jnp.float32) for k, g in grads.items()}},
                               state, params)
    beta = 0.85 + 0.1 * min((t - 1) / 4, 1.0)
    for k, g in grads.items():
      mu[k] = beta * mu[k] + (1 - beta) * g
      nesterov = beta * mu[k] / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta ** t)
      scale = max(1.0, g.shape[1] / g.shape[0]) ** 0.5
      np.testing.assert_allclose(updates["h_0"][k], -0.02 * scale * _newton_schulz5(nesterov),
                                 atol=1e-6, err_msg=f"{k} at step {t}")


def test_muon_leaves_learned_position_embeddings_to_adamw():
  """GPT-2's learned positions are an embedding, as wte: AdamW's (the modern recipe has none)."""
  _, params = tiny_gpt()
  groups = optim.optimizer_groups(params)
  assert groups["wpe"]["embedding"] == "adamw"
  assert groups["wte"]["embedding"] == "adamw"
  assert groups["h_0"]["mlp"]["c_fc"]["kernel"] == "muon"


@pytest.mark.parametrize("chunk", [0, 5])
def test_evaluation_token_losses_are_those_of_the_capped_logits(chunk):
  m, params = tiny_gpt(logit_softcap=3.0, loss_chunk_size=chunk)
  params["wte"]["embedding"] = params["wte"]["embedding"] * 200  # logits far past the cap
  idx = jax.random.randint(jax.random.PRNGKey(1), (2, 13), 0, 64)
  inputs, targets = idx[:, :-1], idx[:, 1:]
  logits = m.apply({"params": params}, inputs)
  assert float(jnp.abs(logits).max()) <= 3.0
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  scored = jnp.broadcast_to(jnp.arange(12), (2, 12))
  losses = m.apply({"params": params}, inputs, scored, targets, method=GPT.token_losses)
  np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(losses.mean(), m.apply({"params": params}, inputs, targets,
                                                     method=GPT.loss), rtol=1e-5)


def test_an_untied_head_starts_at_nanogpt_s_init_unless_zero_init_is_asked():
  _, params = tiny_gpt(tie_embeddings=False)
  head = np.asarray(params["lm_head"]["embedding"])
  assert abs(head.std() - 0.02) < 0.002
  _, params = tiny_gpt(tie_embeddings=False, zero_init_projections=True)
  assert not np.any(params["lm_head"]["embedding"])
