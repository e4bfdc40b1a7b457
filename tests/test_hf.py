"""GPT-2 weights in and out of the Hugging Face format, checked against transformers itself."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  EXPORTABLE,
  TINY_VOCAB,
  float32_config,
  hf_logits,
  records,
  run_python,
  tiny_config,
)

import launch
from jaxgpt import data, defaults, run_dir, tokenizer, train
from jaxgpt.errors import UserError
from jaxgpt.interop import gpt2, weights
from jaxgpt.model import GPT, GPTConfig, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_gpt2(path, init_scale: float | None = 0.3, **overrides):
  """A random tiny transformers GPT-2, every weight and bias drawn at a visible scale
  (`init_scale`; None keeps GPT-2's own init)."""
  torch.manual_seed(0)
  kw = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 16, "vocab_size": TINY_VOCAB,
            "bos_token_id": None, "eos_token_id": None}
  kw.update(overrides)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)).eval()
  with torch.no_grad():
    for p in model.parameters():
      if init_scale is not None:
        p.normal_(0.0, init_scale)
  model.save_pretrained(str(path))
  return model


def tokens(shape=(3, 16)) -> np.ndarray:
  return np.random.default_rng(0).integers(0, TINY_VOCAB, shape)


def assert_logits_close(ours, theirs):
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_imported_gpt2_gives_the_logits_of_transformers(tmp_path):
  theirs = hf_gpt2(tmp_path / "hf")
  arch, params = gpt2.load(str(tmp_path / "hf"))
  assert arch == {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16,
                  "vocab_size": TINY_VOCAB, "bias": True, "gelu_approximate": True,
                  "tie_embeddings": True}
  ours = GPT(GPTConfig(**arch)).apply({"params": params}, jnp.asarray(tokens()))
  assert_logits_close(np.asarray(ours), hf_logits(theirs, tokens()))


def test_an_untied_head_goes_in_and_out_with_the_logits_of_transformers(tmp_path):
  """GPT2LMHeadModel holds a head of its own (tie_word_embeddings=false), as jaxgpt's
  tie_embeddings=False does: read, exported and read back, each with transformers' logits."""
  theirs = hf_gpt2(tmp_path / "hf", tie_word_embeddings=False)
  arch, params = gpt2.load(str(tmp_path / "hf"))
  assert arch["tie_embeddings"] is False and params["lm_head"]["embedding"].shape == (
      TINY_VOCAB, 32)
  ours = GPT(GPTConfig(**arch)).apply({"params": params}, jnp.asarray(tokens()))
  assert_logits_close(np.asarray(ours), hf_logits(theirs, tokens()))
  gpt2.export(params, GPTConfig.from_config(float32_config(**arch)), str(tmp_path / "out"))
  back = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
  assert not back.config.tie_word_embeddings
  assert_logits_close(hf_logits(back, tokens()), hf_logits(theirs, tokens()))


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
  theirs = hf_gpt2(tmp_path / "hf")
  arch, params = gpt2.load(str(tmp_path / "hf"))
  gpt2.export(params, GPTConfig.from_config(float32_config(**arch)), str(tmp_path / "out"))
  back = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
  assert_logits_close(hf_logits(back, tokens()), hf_logits(theirs, tokens()))


def test_a_model_of_another_vocabulary_is_exported_without_gpt2s_tokenizer(tmp_path):
  """A character-level model's ids are not GPT-2's: no tokenizer files, and no end-of-text
  id for transformers to default to 50256, outside its vocabulary."""
  config = GPTConfig.from_config(float32_config(**EXPORTABLE))
  assert not gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config,
                         str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
  (tmp_path / "empty").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "empty")  # an empty directory named by a link
  gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config, str(tmp_path / "link"))
  assert (tmp_path / "link").is_symlink() and (tmp_path / "empty" / "model.safetensors").exists()
  hf_config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
  assert (hf_config.vocab_size, hf_config.bos_token_id, hf_config.eos_token_id) == (65, None, None)


def test_a_vocabulary_past_gpt2s_padded_one_is_exported_whole(tmp_path):
  """Rows past 50304 may be trained (on another tokenizer's ids, say): every row is kept,
  beside GPT-2's tokenizer, which sample reads such a model with too."""
  import safetensors.numpy

  config = GPTConfig.from_config(float32_config(**{**EXPORTABLE, "vocab_size": 60032}))
  params = init_params(GPT(config), jax.random.PRNGKey(0))
  assert gpt2.export(params, config, str(tmp_path / "out"))
  tensors = safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
  np.testing.assert_array_equal(tensors["transformer.wte.weight"],
                                params["wte"]["embedding"])
  hf_config = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
  assert (hf_config.vocab_size, hf_config.eos_token_id) == (60032, tokenizer.EOT_TOKEN)


def test_bfloat16_logits_are_as_close_to_float32_as_torch_autocasts(tmp_path):
  """Mixed precision as nanoGPT runs it: under autocast the residual stream stays float32.

  On GPT-2's init at 12 layers, our bfloat16 logits sit about as far from
  float32 as transformers' under torch.autocast(bfloat16); with a bfloat16
  residual stream they sat twice as far (0.0018 against 0.0010, mean |d|).
  """
  theirs = hf_gpt2(tmp_path / "hf", n_layer=12, n_head=4, n_embd=128, n_positions=64,
                   vocab_size=512, init_scale=None)
  arch, params = gpt2.load(str(tmp_path / "hf"))
  x_BT = np.random.default_rng(0).integers(0, 512, (4, 64))
  f32 = hf_logits(theirs, x_BT)
  with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    autocast = theirs(torch.tensor(x_BT)).logits.float().numpy()
  config = float32_config(**arch)
  config.update(dtype="bfloat16", attention="xla")
  ours = np.asarray(GPT(GPTConfig.from_config(config)).apply({"params": params}, x_BT))
  off = lambda a: float(np.abs(a - f32).mean())
  assert off(ours) < 1.3 * off(autocast)


def test_a_checkpoint_that_is_not_gpt2_is_refused_by_name(tmp_path):
  hf_gpt2(tmp_path / "hf", activation_function="relu")
  with pytest.raises(UserError, match="activation_function='relu'"):
    gpt2.load(str(tmp_path / "hf"))
  with pytest.raises(UserError, match="hf_checkpoint_dir"):
    gpt2.checkpoint_dir("gpt2", str(tmp_path / "missing"))


def test_a_damaged_checkpoint_is_an_error_naming_its_file(tmp_path):
  hf = tmp_path / "hf"
  hf_gpt2(hf)
  weights_file = hf / "model.safetensors"
  weights_file.write_bytes(weights_file.read_bytes()[:1000])  # a copy cut short
  with pytest.raises(UserError, match=f"{weights_file}: not a readable checkpoint file"):
    gpt2.load(str(hf))
  weights_file.unlink()
  (hf / "pytorch_model.bin").write_bytes(b"not a torch file")
  with pytest.raises(UserError, match=r"pytorch_model.bin: not a readable checkpoint file"):
    gpt2.load(str(hf))
  (hf / "config.json").write_text('{"model_type": "gpt2", "n_embd": 32}')
  with pytest.raises(UserError, match="config.json: not a GPT-2 this model can hold: no "
                                      "'n_layer'; no 'n_head'; no 'n_positions'"):
    gpt2.load(str(hf))
  (hf / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2, "n_head": 7, '
                                  '"n_embd": 32, "n_positions": 16, "vocab_size": 96}')
  with pytest.raises(UserError, match="config.json: not a GPT-2 this model can hold: n_embd=32 "
                                      "does not split into n_head=7 heads"):
    gpt2.load(str(hf))
  (hf / "config.json").write_text('{"model_type": "gpt2", "n_layer": "2", "n_head": null, '
                                  '"n_embd": 32.0, "n_positions": 16, "vocab_size": true, '
                                  '"tie_word_embeddings": "false"}')  # edited by hand
  with pytest.raises(UserError, match="config.json: not a GPT-2 this model can hold: "
                                      "n_layer='2' \\(need a positive integer\\); n_head=None "
                                      ".*; n_embd=32.0 .*; vocab_size=True .*; "
                                      "tie_word_embeddings='false' \\(need true or false\\)$"):
    gpt2.load(str(hf))
  (hf / "config.json").write_text("not json")
  with pytest.raises(UserError, match="config.json: not readable as JSON"):
    gpt2.load(str(hf))


def test_a_checkpoint_of_another_size_than_init_from_names_is_refused(tmp_path):
  assert tuple(gpt2.SIZES) == defaults.GPT2_MODELS
  # gpt2's size; the size is read from config.json, before any tensor.
  transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768).save_pretrained(str(tmp_path / "hf"))
  with pytest.raises(UserError, match=f"init_from=gpt2-xl is n_layer=48, n_embd=1600, but "
                                      f"hf_checkpoint_dir='{tmp_path}/hf' holds n_layer=12, "
                                      r"n_embd=768 \(gpt2\)"):
    weights.pretrained("gpt2-xl", str(tmp_path / "hf"))
  assert gpt2.checkpoint_dir("gpt2", str(tmp_path / "hf")) == str(tmp_path / "hf")
  hf_gpt2(tmp_path / "tiny")
  with pytest.raises(UserError, match=r"holds n_layer=2, n_embd=32 \(none of GPT-2's sizes\)"):
    gpt2.checkpoint_dir("gpt2", str(tmp_path / "tiny"))


def test_training_from_gpt2_starts_at_its_loss(tmp_path, token_dir, monkeypatch):
  monkeypatch.setitem(gpt2.SIZES, "gpt2", (2, 32))  # the tiny checkpoint stands in for gpt2
  theirs = hf_gpt2(tmp_path / "hf")
  config = tiny_config(tmp_path, token_dir, init_from="gpt2",
                       hf_checkpoint_dir=str(tmp_path / "hf"), max_iters=1, eval_interval=1,
                       warmup_iters=0)
  launch.run(config)
  ran = run_dir.RunDir(config.out_dir).read_config()
  assert (ran["bias"], ran["gelu_approximate"]) == (True, True)  # taken from the checkpoint
  evals = records(config.out_dir, "eval")
  val = data.open_split(config.data_dir, "val", config.block_size, config.vocab_size)
  losses = []
  for batch in data.eval_batches(val, batch_size=config.batch_size, n_batches=config.eval_iters,
                                 seed=config.seed):
    batch = np.asarray(batch, np.int64)
    logits = torch.tensor(hf_logits(theirs, batch[:, :-1]))
    losses.append(torch.nn.functional.cross_entropy(
        logits.reshape(-1, TINY_VOCAB), torch.tensor(batch[:, 1:]).reshape(-1)).item())
  assert evals[0]["iter"] == 0
  assert evals[0]["val_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
  assert evals[1]["iter"] == 1  # and a step trained from there


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["nanogpt", "gpt2"])
def test_export_cli_writes_a_trained_run_that_transformers_loads(tmp_path, token_dir, recipe):
  """nanoGPT's recipe (no biases, exact GELU) and GPT-2's both export, tokenizer included."""
  gpt2_recipe = recipe == "gpt2"
  config = tiny_config(tmp_path, token_dir, bias=gpt2_recipe, gelu_approximate=gpt2_recipe,
                       max_iters=2, eval_interval=2, vocab_size=50304)  # GPT-2's tokens
  train.train(config)
  to = tmp_path / "hf_out"
  result = run_python("-m", "jaxgpt.export", f"--out_dir={config.out_dir}", f"--out={to}")
  assert result.returncode == 0, result.stderr
  assert "GPT-2's tokenizer files" in result.stdout
  assert "INFO" not in result.stderr and "orbax" not in result.stderr.lower()  # no chatter
  _, params, _ = weights.from_run(config.out_dir)
  ours = GPT(GPTConfig.from_config(config)).apply({"params": params}, jnp.asarray(tokens()))
  theirs = transformers.GPT2LMHeadModel.from_pretrained(str(to)).eval()
  assert_logits_close(np.asarray(ours)[..., :tokenizer.N_VOCAB], hf_logits(theirs, tokens()))
  text = "The function returns"
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(to))
  assert hf_tokenizer.encode(text) == tokenizer.gpt2().encode(text) != []
  for name in os.listdir(to):
    assert os.stat(to / name).st_mode & 0o777 == 0o666 & ~current_umask(), name


def current_umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def test_exact_gelu_without_biases_matches_transformers_away_from_zero(tmp_path):
  """Scaled-up weights make the exact and the tanh GELU differ: the export must pick exact."""
  config = float32_config(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=TINY_VOCAB,
                          bias=False, gelu_approximate=False)
  params = jax.tree.map(lambda p: 10 * p,
                        init_params(GPT(GPTConfig.from_config(config)), jax.random.PRNGKey(0)))
  gpt2.export(params, GPTConfig.from_config(config), str(tmp_path / "out"))
  ours = GPT(GPTConfig.from_config(config)).apply({"params": params}, jnp.asarray(tokens()))
  theirs, loading = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "out"),
                                                                 output_loading_info=True)
  # Every bias is in the file: transformers initializes none afresh (and warns of none).
  assert not loading["missing_keys"]
  assert_logits_close(np.asarray(ours), hf_logits(theirs.eval(), tokens()))


def test_a_gpt2_checkpoint_in_the_hubs_layout_is_read(tmp_path):
  """transformers' save_pretrained writes today's layout: the 'transformer.' prefix and no
  attention buffers. OpenAI's checkpoints on the Hub have no prefix and carry h.N.attn.bias;
  files saved by older transformers carry h.N.attn.masked_bias too. Their config.json names
  no tie_word_embeddings: tied, as transformers reads it."""
  import safetensors.numpy

  theirs = hf_gpt2(tmp_path / "hf")
  hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
  del hf_config["tie_word_embeddings"]
  (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config))
  path = str(tmp_path / "hf" / "model.safetensors")
  tensors = {k.removeprefix("transformer."): v
             for k, v in safetensors.numpy.load_file(path).items()}
  block = theirs.config.n_positions
  for i in range(theirs.config.n_layer):
    tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((block, block), np.float32))[None, None]
    tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
  arch, params = gpt2.load(str(tmp_path / "hf"))
  ours = GPT(GPTConfig(**arch)).apply({"params": params}, jnp.asarray(tokens()))
  assert_logits_close(np.asarray(ours), hf_logits(theirs, tokens()))


def test_a_gpt2_checkpoint_in_several_safetensors_files_is_read(tmp_path):
  """save_pretrained splits a large model (gpt2-xl is 6.4 GB in float32) into files that an
  index names; every one of them is read."""
  theirs = hf_gpt2(tmp_path / "hf")
  theirs.save_pretrained(str(tmp_path / "split"), max_shard_size="40KB")
  assert len(list((tmp_path / "split").glob("model-*.safetensors"))) > 1
  arch, params = gpt2.load(str(tmp_path / "split"))
  ours = GPT(GPTConfig(**arch)).apply({"params": params}, jnp.asarray(tokens()))
  assert_logits_close(np.asarray(ours), hf_logits(theirs, tokens()))


@pytest.mark.parametrize("activation,approximate", [("gelu", False),
                                                     ("gelu_pytorch_tanh", True)])
def test_a_gpt2_of_either_gelu_is_imported_as_its_config_says(tmp_path, activation,
                                                               approximate):
  """The logits are compared 10x tighter than assert_logits_close, which the other GELU's
  (off by 1.3e-4 of the largest logit) would pass; the right one is off by 3.4e-7."""
  theirs = hf_gpt2(tmp_path / "hf", activation_function=activation)
  arch, params = gpt2.load(str(tmp_path / "hf"))
  assert arch["gelu_approximate"] is approximate
  ours = GPT(GPTConfig(**arch)).apply({"params": params}, jnp.asarray(tokens()))
  expected = hf_logits(theirs, tokens())
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_an_exported_tokenizer_knows_the_models_block_size(tmp_path):
  """transformers truncates (truncation=True) and warns at model_max_length: a model of 8
  positions fed 1024 tokens would index past its position table."""
  transformers = pytest.importorskip("transformers")
  config = GPTConfig.from_config(float32_config(**{**EXPORTABLE,
                                                   "vocab_size": tokenizer.N_VOCAB}))
  assert gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config,
                     str(tmp_path / "out"))
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert hf_tokenizer.model_max_length == 8
  assert hf_tokenizer("word " * 20, truncation=True)["input_ids"].__len__() == 8
  text = "The function returns"  # no space put before it: the ids the model was trained on
  assert hf_tokenizer.encode(text) == tokenizer.gpt2().encode(text) != []


def test_a_tied_checkpoint_holding_the_shared_matrix_as_its_head_alone_is_read(tmp_path):
  """`safetensors.torch.save_model` keeps one name of a shared tensor: GPT-2's as lm_head."""
  theirs = hf_gpt2(tmp_path / "hf")
  state = {k: v.contiguous() for k, v in theirs.state_dict().items()
           if k != "transformer.wte.weight"}
  safetensors_torch = pytest.importorskip("safetensors.torch")
  safetensors_torch.save_file(state, str(tmp_path / "hf" / "model.safetensors"),
                              metadata={"format": "pt"})
  arch, params = gpt2.load(str(tmp_path / "hf"))
  ours = GPT(GPTConfig(**arch)).apply({"params": params}, jnp.asarray(tokens()))
  assert_logits_close(np.asarray(ours), hf_logits(theirs, tokens()))


def test_a_tied_checkpoint_whose_head_differs_from_wte_is_refused(tmp_path):
  """transformers 4 took wte as such a head and 5 takes lm_head.weight: neither is a guess to
  make quietly."""
  theirs = hf_gpt2(tmp_path / "hf")
  state = {k: v.clone().contiguous() for k, v in theirs.state_dict().items()}
  safetensors_torch = pytest.importorskip("safetensors.torch")
  for key in ("lm_head.weight", "transformer.wte.weight"):  # a diverged run's, read as it is
    state[key][0, 0] = float("nan")
  safetensors_torch.save_file(state, str(tmp_path / "hf" / "model.safetensors"),
                              metadata={"format": "pt"})
  assert np.isnan(gpt2.load(str(tmp_path / "hf"))[1]["wte"]["embedding"][0, 0])
  state["lm_head.weight"] += 1.0
  safetensors_torch.save_file(state, str(tmp_path / "hf" / "model.safetensors"),
                              metadata={"format": "pt"})
  with pytest.raises(UserError, match=f"^{tmp_path / 'hf'}: lm_head.weight differs from "
                                      "transformer.wte.weight, though the model ties them"):
    gpt2.load(str(tmp_path / "hf"))
