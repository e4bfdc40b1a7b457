"""KV-cache sampling: nanoGPT's output token for token, reproducible, one compile per bucket."""

from __future__ import annotations

import functools
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import restore_state, run_python, tiny_config, tiny_gpt, tiny_model

import launch
from jaxgpt import checkpoint, cli, sample, tokenizer, train
from jaxgpt.errors import UserError
from jaxgpt.evals import hellaswag, tasks
from jaxgpt.inference import decoding
from jaxgpt.interop import weights
from jaxgpt.model import GPT, GPTConfig, init_params


@functools.cache
def peaked_model() -> tuple[GPT, dict]:
  """A tiny random GPT whose logits are far apart, so float noise never changes an argmax."""
  model = GPT(tiny_model(block_size=32, bias=True))
  params = init_params(model, jax.random.PRNGKey(0))
  params["wte"]["embedding"] = params["wte"]["embedding"] * 20
  return model, params


def prompt(n: int, seed: int = 0) -> list[int]:
  return np.random.default_rng(seed).integers(0, 64, n).tolist()


# Lengths 3 and 20 outgrow block_size=32 while decoding 40 tokens; 40 is cropped at the start.
PROMPTS = [prompt(3, 1), prompt(20, 2), prompt(40, 3)]
N_NEW = 40


@functools.cache
def recompute(p: tuple[int, ...]) -> list[int]:
  """nanoGPT's greedy continuation: the whole forward pass per token, context cropped left."""
  model, params = peaked_model()
  p = p[-model.config.block_size:]
  out = decoding.generate_recompute(model, params, jnp.array([p]), jax.random.PRNGKey(0),
                                    max_new_tokens=N_NEW, temperature=0.0)
  return np.asarray(out[0]).tolist()


@pytest.fixture(scope="module")
def greedy():
  model, params = peaked_model()
  return decoding.generate(model, params, PROMPTS, jax.random.PRNGKey(5), max_new_tokens=N_NEW,
                           temperature=0.0)


def test_greedy_with_the_cache_equals_recomputing_every_step(greedy):
  for p, row in zip(PROMPTS, greedy):
    assert row.tolist() == recompute(tuple(p))


def test_greedy_equals_recompute_when_everything_fits_the_cache():
  model, params = peaked_model()
  prompts = [prompt(3, 1), prompt(9, 4)]  # bucket 16 + 10 new tokens fit block_size 32
  out = decoding.generate(model, params, prompts, jax.random.PRNGKey(0), max_new_tokens=10,
                          temperature=0.0)
  assert [row.tolist() for row in out] == [recompute(tuple(p))[:10] for p in prompts]


def test_seeded_samples_past_block_size_draw_nanogpt_s_tokens():
  """Each token of a sample that outgrows block_size is the one nanoGPT's loop draws from the
  last block_size tokens with the same key. A seeded draw sees what an argmax of a tiny model
  does not: with learned positions, a window one token short, or a cache kept past
  block_size, changed no greedy token of the tests above, and half the seeded ones here."""
  model, params = tiny_gpt(block_size=16)
  params["wpe"]["embedding"] = params["wpe"]["embedding"] * 5
  params["wte"]["embedding"] = params["wte"]["embedding"] * 5
  for block in ("h_0", "h_1"):  # sharper attention: the context weighs
    params[block]["attn"]["c_attn"]["kernel"] = params[block]["attn"]["c_attn"]["kernel"] * 8
  prompts = [prompt(9, seed) for seed in range(4)]  # one length: the reference's one batch
  kw = {"max_new_tokens": N_NEW, "temperature": 0.8, "top_k": 20}
  cached = decoding.generate(model, params, prompts, jax.random.PRNGKey(3), **kw)
  reference = decoding.generate_recompute(model, params, jnp.array(prompts),
                                          jax.random.PRNGKey(3), **kw)
  np.testing.assert_array_equal(cached, reference)


def test_top_k_1_and_a_tiny_top_p_are_greedy(greedy):
  model, params = peaked_model()
  top_k = decoding.generate(model, params, PROMPTS, jax.random.PRNGKey(1), temperature=1.0,
                            top_k=1, max_new_tokens=N_NEW)
  np.testing.assert_array_equal(top_k, greedy)
  logits_BV = jax.random.normal(jax.random.PRNGKey(0), (8, 64))
  top_p = decoding.sample_logits(logits_BV, jax.random.PRNGKey(1), 1.0, None, top_p=1e-6)
  np.testing.assert_array_equal(top_p, jnp.argmax(logits_BV, axis=-1))


def test_same_seed_same_samples_different_seed_different():
  model, _ = peaked_model()
  params = init_params(model, jax.random.PRNGKey(0))  # near-uniform logits: diverse samples
  prompts = [prompt(5)] * 4
  draw = lambda seed: decoding.generate(model, params, prompts, jax.random.PRNGKey(seed),
                                        max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9)
  a, b, c = draw(1), draw(1), draw(2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert len({tuple(row) for row in a}) == 4  # the rows of a batch are sampled independently


def test_top_p_keeps_only_the_nucleus():
  logits_BV = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draws = jax.vmap(lambda r: decoding.sample_logits(logits_BV, r, 1.0, None, top_p=0.7))(
      jax.random.split(jax.random.PRNGKey(0), 400))
  assert set(np.asarray(draws).ravel().tolist()) == {0, 1}  # 0.5 + 0.3 reach 0.7


def test_top_k_keeps_exactly_k_tokens():
  logits_BV = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
  draws = jax.vmap(lambda r: decoding.sample_logits(logits_BV, r, 1.0, 2))(
      jax.random.split(jax.random.PRNGKey(0), 400))
  assert set(np.asarray(draws).ravel().tolist()) == {0, 1}


def test_temperature_samples_the_softmax_of_the_logits_over_it():
  """temperature 0.5 draws p**2 renormalised, as nanoGPT's logits / temperature does: a
  temperature that flattened instead of sharpening passed every other test (each compares
  the cached decoder with the recompute one, which share `sample_logits`, or is greedy)."""
  probs = np.array([0.5, 0.3, 0.2])
  logits_BV = jnp.log(jnp.array([probs]))
  draws = jax.vmap(lambda r: decoding.sample_logits(logits_BV, r, 0.5, None))(
      jax.random.split(jax.random.PRNGKey(0), 4000))
  counts = np.bincount(np.asarray(draws).ravel(), minlength=3) / 4000
  np.testing.assert_allclose(counts, probs**2 / np.sum(probs**2), atol=0.03)


def test_top_k_keeps_every_token_tied_with_the_kth():
  """As nanoGPT's `logits[logits < v[:, [-1]]] = -inf`: top_k=2 of logits 1, 0, 0, -1 keeps
  both 0s, not the first of them alone."""
  logits_BV = jnp.array([[1.0, 0.0, 0.0, -1.0]])
  draws = jax.vmap(lambda r: decoding.sample_logits(logits_BV, r, 1.0, 2))(
      jax.random.split(jax.random.PRNGKey(0), 400))
  assert set(np.asarray(draws).ravel().tolist()) == {0, 1, 2}


def test_cached_next_logits_equal_the_full_forward_pass():
  """Each token fed through the KV cache, at its position, has the logits of the whole pass:
  the greedy tests' peaked model hardly depends on positions or attention, so they cannot
  see a cache that gets them wrong."""
  model, params = tiny_gpt()  # learned positions, as GPT-2's
  tokens_BT = jax.random.randint(jax.random.PRNGKey(7), (2, 12), 0, 64)
  full_BTV = jax.jit(model.apply)({"params": params}, tokens_BT)
  # Jitted, as decoding's are: one program for the prompt and one for the steps after it,
  # where op by op compiled one for every op.
  next_logits = jax.jit(lambda params, cache, tokens_BT, last_B, positions_BT: model.apply(
      {"params": params, "cache": cache}, tokens_BT, last_B, positions_BT,
      method=GPT.next_logits, mutable=["cache"]))
  _, state = next_logits(params, decoding.init_cache(model, 2, 12), tokens_BT[:, :6],
                         jnp.full((2,), 5), jnp.broadcast_to(jnp.arange(6), (2, 6)))
  for t in range(6, 12):
    logits_BV, state = next_logits(params, state["cache"], tokens_BT[:, t:t + 1],
                                   jnp.zeros((2,), jnp.int32), jnp.full((2, 1), t))
    np.testing.assert_allclose(logits_BV, full_BTV[:, t], rtol=1e-5, atol=1e-5)


def test_rows_stop_at_the_stop_token():
  """Each row is the unstopped sample up to its first stop token, then the stop token alone,
  in a batch whose rows have all stopped (whose tail decoding leaves unwritten) too."""
  model, params = tiny_gpt(block_size=32)
  key = jax.random.PRNGKey(0)
  sample = lambda prompts, stop=None: decoding.generate(
      model, params, prompts, key, max_new_tokens=N_NEW, temperature=1.0,
      stop_token=stop).tolist()
  free = sample(PROMPTS)
  k = next(k for k in range(3, N_NEW) if free[0][k] not in free[0][:k])  # a first occurrence
  stop = free[0][k]
  assert any(t != stop for t in free[0][k + 1:])  # stopping changes row 0
  for stopped in (sample(PROMPTS, stop), sample(PROMPTS[:1], stop)):
    for row_free, row in zip(free, stopped):
      end = row_free.index(stop) if stop in row_free else N_NEW
      assert row == row_free[:end + 1] + [stop] * (N_NEW - end - 1)


def test_rows_that_fill_a_batch_out_are_not_waited_for(monkeypatch):
  """sample fills its last batch out with rows it drops (so every batch runs one compiled
  program): decoding stops once the rows kept have stopped, not once the fillers have too."""
  model, params = tiny_gpt(block_size=32)
  key, steps, real_call = jax.random.PRNGKey(0), [], decoding._Sampler.__call__
  kw = {"max_new_tokens": N_NEW, "temperature": 1.0}
  free = decoding.generate(model, params, PROMPTS, key, **kw).tolist()  # as the test above
  stop = next(t for t in free[0][3:] if t not in free[1] + free[2])  # the fillers never meet it
  k = free[0].index(stop)

  def counted(self, logits_BV, j, done_B):  # one call per token decoded
    jax.debug.callback(lambda: steps.append(1))
    return real_call(self, logits_BV, j, done_B)

  monkeypatch.setattr(decoding._Sampler, "__call__", counted)
  decoding.generate_padded.clear_cache()  # traced again, counting
  out = decoding.generate(model, params, PROMPTS, key, stop_token=stop, kept_rows=1, **kw)
  decoding.generate_padded.clear_cache()
  assert len(steps) == k + 1 < N_NEW
  assert out[0].tolist() == free[0][:k + 1] + [stop] * (N_NEW - k - 1)


def test_prompts_of_different_lengths_in_a_bucket_compile_once():
  model = GPT(tiny_model(block_size=64, n_layer=1, n_embd=16))
  params = init_params(model, jax.random.PRNGKey(0))
  kw = {"max_new_tokens": 4, "temperature": 0.8, "top_k": 10}
  before = decoding.generate_padded._cache_size()
  for lengths in ((17, 20, 32), (25, 18, 31), (32, 32, 19)):  # all in the 32 bucket
    decoding.generate(model, params, [prompt(n) for n in lengths], jax.random.PRNGKey(0), **kw)
  assert decoding.generate_padded._cache_size() == before + 1


def test_prompts_are_cropped_from_the_left_and_bucketed():
  prompt_BP, lengths_B = decoding.pad_prompts([[1, 2, 3, 4, 5], [7]], block_size=4)
  np.testing.assert_array_equal(prompt_BP, [[2, 3, 4, 5], [7, 0, 0, 0]])
  np.testing.assert_array_equal(lengths_B, [4, 1])
  assert decoding.pad_prompts([[1] * 17], block_size=1024)[0].shape == (1, 32)
  assert decoding.pad_prompts([[1] * 3], block_size=1024)[0].shape == (1, decoding.MIN_BUCKET)
  with pytest.raises(UserError, match="empty"):
    decoding.pad_prompts([[1], []], block_size=4)


def test_a_prompt_token_the_model_has_no_row_for_is_refused():
  model = GPT(tiny_model(vocab_size=64))
  params = init_params(model, jax.random.PRNGKey(0))
  with pytest.raises(UserError, match="the prompt holds token 198, beyond the model's "
                                      "vocab_size=64"):
    decoding.generate(model, params, [[5, 198]], jax.random.PRNGKey(0), max_new_tokens=2)


@pytest.mark.parametrize("settings,message", [
    ({"top_p": 0.0}, r"top_p=0.0: must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p=1.5: must be in \(0, 1\]"),
    ({"top_p": 1e-39}, r"top_p=1e-39: below float32's smallest normal number, 1.18e-38, which"),
    ({"temperature": -0.5}, r"temperature=-0.5: must be >= 0 and finite in float32 \(0 is greedy"),
    ({"temperature": float("inf")}, r"temperature=inf: must be >= 0 and finite"),
    ({"temperature": 1e39}, r"temperature=1e\+39: must be >= 0 and finite in float32"),
    ({"max_new_tokens": 3_000_000_000}, r"max_new_tokens=3000000000: must be in \[1, 1,000,000\]"),
    ({"temperature": 1e-39}, r"temperature=1e-39: below 1e-30 the float32 logits divided"),
    ({"top_k": -3}, r"top_k=-3: must be positive"),
    ({"top_k": 0}, r"top_k=0: must be positive"),
    ({"max_new_tokens": 0}, r"max_new_tokens=0: must be in \[1, 1,000,000\]"),
])
def test_settings_that_sample_nonsense_are_refused_by_name(settings, message):
  model, params = peaked_model()
  with pytest.raises(UserError, match=message):
    decoding.generate(model, params, [prompt(3)], jax.random.PRNGKey(0),
                      **{"max_new_tokens": 2, **settings})


def test_sample_refuses_a_model_whose_vocabulary_is_not_gpt2s():
  model = GPT(tiny_model(vocab_size=64))  # a character-level run: "!" is its token 0 too
  params = init_params(model, jax.random.PRNGKey(0))
  with pytest.raises(UserError, match="the model's vocab_size=64 cannot hold GPT-2's 50257 "
                                      "tokens"):
    next(sample.sample_texts(model, params, "!", num_samples=1, batch_rows=1, max_new_tokens=2,
                             temperature=0.0, top_k=None, top_p=1.0, stop_at_eot=False, seed=0))


def test_an_empty_start_samples_a_new_document():
  """--start='' is the model's view after end-of-text, as the closing sample's empty prompt."""
  model = GPT(tiny_model(vocab_size=50304))
  params = init_params(model, jax.random.PRNGKey(0))
  kw = {"num_samples": 1, "batch_rows": 1, "max_new_tokens": 3, "temperature": 0.0,
        "top_k": None, "top_p": 1.0, "stop_at_eot": False, "seed": 0}
  [after_eot] = sample.sample_texts(model, params, "<|endoftext|>", **kw)
  assert list(sample.sample_texts(model, params, "", **kw)) == [
      after_eot.removeprefix("<|endoftext|>")]


@pytest.mark.slow
def test_sample_cli_prints_each_sample_and_a_separator(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2,
                       vocab_size=50304)  # GPT-2's tokens: sample refuses a smaller vocabulary
  train.train(config)
  result = run_python("-m", "jaxgpt.sample", f"--out_dir={config.out_dir}", "--start=A",
                      "--num_samples=3", "--max_new_tokens=8", "--top_k=20")
  assert result.returncode == 0, result.stderr
  samples = result.stdout.split("---------------\n")
  assert len(samples) == 4 and samples[-1] == ""
  assert all(s.startswith("A") for s in samples[:3])
  with pytest.raises(UserError, match=r"no checkpoint at step 1; it holds \[2\]"):
    weights.from_run(config.out_dir, 1)


@pytest.mark.slow
def test_a_run_trained_with_cudnn_attention_reads_on_a_machine_without_it(tmp_path, token_dir,
                                                                          monkeypatch):
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2)
  train.train(config)
  read_meta = checkpoint.Checkpoints.read_meta

  def as_a_gpu_saved_it(self, step):  # a GPU run records the kernel its device ran
    meta = read_meta(self, step)
    meta["config"]["attention"] = "cudnn"
    return meta

  monkeypatch.setattr(checkpoint.Checkpoints, "read_meta", as_a_gpu_saved_it)
  run_config, params, _ = weights.load("resume", out_dir=config.out_dir, dtype="float32")
  assert run_config.attention == "auto"  # this device's kernel: XLA's on a CPU
  logits = GPT(GPTConfig.from_config(run_config)).apply({"params": params},
                                                        jnp.zeros((1, 4), jnp.int32))
  assert logits.shape == (1, 4, config.vocab_size)


def test_commands_read_only_a_checkpoint_s_params_and_check_them(tmp_path, token_dir,
                                                                 monkeypatch):
  """sample, evaluate and export read the params alone: the optimizer's moments (twice their
  memory) are never read, so a fingerprint of theirs changed goes unseen; one of the params'
  is found."""
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2)
  train.train(config)
  saved = restore_state(config, 2)[0].params
  read_meta = checkpoint.Checkpoints.read_meta

  def changing(part: str):
    def read(self, step):
      meta = read_meta(self, step)
      changed = next(p for p in meta[checkpoint.FINGERPRINTS] if p.startswith(part))
      meta[checkpoint.FINGERPRINTS][changed] += 1
      return meta
    return read

  monkeypatch.setattr(checkpoint.Checkpoints, "read_meta", changing(".opt_state"))
  _, params, step = weights.from_run(config.out_dir)
  assert step == 2
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved), strict=True):
    np.testing.assert_array_equal(a, b)
  monkeypatch.setattr(checkpoint.Checkpoints, "read_meta", changing(".params"))
  with pytest.raises(UserError, match=r"checkpoints/2 is unreadable \(its contents changed "
                     r"after the save: 1 array\(s\) differ .*\(\.params\["):
    weights.from_run(config.out_dir)


def test_a_checkpoint_removed_as_it_is_read_gives_way_to_the_newer_one(tmp_path, token_dir,
                                                                       monkeypatch):
  """A run training in out_dir saves step 4 and its keep_checkpoints removes step 2 while a
  command reads step 2: the command reads step 4 (it said step 2 was unreadable), whether
  step 2 is gone yet or not."""
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2)
  train.train(config)
  directory = os.path.join(config.out_dir, "checkpoints")
  os.rename(os.path.join(directory, "4"), os.path.join(tmp_path, "4"))  # not saved yet
  restore_params = checkpoint.Checkpoints.restore_params

  def training_meanwhile(self, step, *args):
    os.rename(os.path.join(tmp_path, "4"), os.path.join(directory, "4"))
    shutil.rmtree(os.path.join(directory, "2", "state"))  # removed in part as yet
    monkeypatch.setattr(checkpoint.Checkpoints, "restore_params", restore_params)
    return restore_params(self, step, *args)

  monkeypatch.setattr(checkpoint.Checkpoints, "restore_params", training_meanwhile)
  _, params, step = weights.from_run(config.out_dir)
  assert step == 4
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restore_state(config, 4)[0].params),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_every_checkpoint_unreadable_is_one_error_naming_the_oldest(tmp_path, token_dir,
                                                                     monkeypatch):
  """Steps 4 and 2 both fail to read (no run saving meanwhile): the newest is passed over for
  step 2, whose failure is the error; step 4, already found unreadable, is no newer one to read
  again (from_run went round between them until Python's recursion limit)."""
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2)
  train.train(config)
  reads = []

  def unreadable(self, step, *args):
    reads.append(step)
    raise checkpoint.CorruptCheckpoint("it is broken")

  monkeypatch.setattr(checkpoint.Checkpoints, "restore_params", unreadable)
  with pytest.raises(UserError, match=r"checkpoints/2 is unreadable \(it is broken\)$"):
    weights.from_run(config.out_dir)
  assert reads == [4, 2]


def test_sample_errors_name_what_is_missing(tmp_path):
  with pytest.raises(UserError, match="no checkpoints"):
    weights.from_run(str(tmp_path / "empty"))
  with pytest.raises(UserError, match="^out_dir is empty: name the run directory"):
    weights.from_run(" ")
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="notes.txt' is a file, not a run directory$"):
    weights.from_run(str(tmp_path / "notes.txt"))
  # Flags the chosen weights would not read are refused, not passed over.
  with pytest.raises(UserError, match="--init_from=resume would not read it"):
    weights.load("resume", out_dir=str(tmp_path), hf_checkpoint_dir=str(tmp_path / "hf"))
  with pytest.raises(UserError, match="--init_from=gpt2 has none"):
    weights.load("gpt2", out_dir=str(tmp_path), step=3)
  with pytest.raises(UserError, match="FILE:.*nope.txt"):
    sample.read_start(f"FILE:{tmp_path / 'nope.txt'}")
  (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
  with pytest.raises(UserError, match="latin1.txt: not UTF-8 text"):
    sample.read_start(f"FILE:{tmp_path / 'latin1.txt'}")
  with pytest.raises(UserError, match="Is a directory"):
    sample.read_start(f"FILE:{tmp_path}")
  with pytest.raises(UserError, match="^--start=FILE: names no file"):  # was "FILE::"
    sample.read_start("FILE:")
  (tmp_path / "p.txt").write_text("Once upon a time", encoding="utf-8")
  assert sample.read_start(f"FILE:{tmp_path / 'p.txt'}") == "Once upon a time"


def test_paths_no_shell_expands_start_at_home(tmp_path, monkeypatch):
  """`~` inside FILE:~/x, text:~/x or --out=~/x reaches us as typed."""
  monkeypatch.setenv("HOME", str(tmp_path))
  (tmp_path / "p.txt").write_text("Once upon a time", encoding="utf-8")
  assert sample.read_start("FILE:~/p.txt") == "Once upon a time"
  assert tasks.read_text_tokens("~/p.txt") == tokenizer.gpt2().encode_ordinary("Once upon a time")
  with pytest.raises(UserError, match=f"HellaSwag file {tmp_path}/hs.jsonl: not found"):
    hellaswag.resolve("~/hs.jsonl")
  with pytest.raises(UserError, match=f"HellaSwag file {tmp_path}: a directory"):
    hellaswag.resolve("~")
  assert cli._PathParser().parse("~/runs/x") == f"{tmp_path}/runs/x"


@pytest.mark.parametrize("start", ["The function returns", ""])
def test_the_closing_sample_continues_its_prompt_or_starts_a_document(start):
  model = GPT(tiny_model(vocab_size=50304))
  params = init_params(model, jax.random.PRNGKey(0))
  text = decoding.continuation(model, params, start, max_new_tokens=6, seed=0)
  assert text.startswith(start) and len(text) > len(start)
  assert not text.endswith("\ufffd")  # a cut-off character is left out


def test_the_closing_sample_reads_end_of_text_in_its_prompt_as_sample_does(monkeypatch):
  """One token, 50256, as nanoGPT's sample.py and `python -m jaxgpt.sample` encode it."""
  prompts = []
  monkeypatch.setattr(decoding, "generate", lambda model, params, rows, *args, **kwargs:
                      prompts.extend(rows) or np.zeros((1, 1), np.int32))
  decoding.continuation(None, None, "A.<|endoftext|>B", max_new_tokens=1, seed=0)
  assert prompts == [tokenizer.gpt2().encode("A.<|endoftext|>B", allowed_special="all")]
  assert tokenizer.EOT_TOKEN in prompts[0]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_never_draws_the_padding_ids_past_gpt2_s_vocabulary(temperature):
  m, params = tiny_gpt(vocab_size=50304)
  emb = params["wte"]["embedding"]
  # Every real token's logit 0, the padding rows' large: only the crop keeps them out.
  pad = 50 * jax.random.normal(jax.random.PRNGKey(3), (50304 - 50257, emb.shape[1]))
  params["wte"]["embedding"] = jnp.zeros_like(emb).at[50257:].set(pad)
  out = decoding.generate(m, params, [[1, 2, 3], [4]], jax.random.PRNGKey(0),
                          max_new_tokens=4, temperature=temperature)
  assert np.asarray(out).max() < 50257


SEPARATOR = "---------------"


def sampled(model: GPT, params: dict, start: str, **settings) -> list[str]:
  """`python -m jaxgpt.sample`'s texts: by default one of 8 tokens, seed 0, nanoGPT's
  temperature 0.8 and top_k 200, in batches of 32."""
  return list(sample.sample_texts(model, params, start, **{
      "num_samples": 1, "batch_rows": 32, "max_new_tokens": 8, "temperature": 0.8,
      "top_k": 200, "top_p": 1.0, "stop_at_eot": False, "seed": 0, **settings}))


def test_the_closing_sample_continues_the_config_s_prompt_with_its_seed(tmp_path, token_dir,
                                                                         capsys):
  """sample_start and seed reach the closing sample, drawn as `python -m jaxgpt.sample` draws
  one from the last checkpoint with nanoGPT's settings (temperature 0.8, top_k 200)."""
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2, vocab_size=50304,
                       sample_start="The function", sample_tokens=8, seed=7)
  launch.run(config)
  printed = capsys.readouterr().out
  run_config, params, step = weights.from_run(config.out_dir)
  assert step == 2
  model = GPT(GPTConfig.from_config(run_config))
  [expected] = sampled(model, params, "The function", seed=7)
  assert f"{SEPARATOR}\n{expected.rstrip()}\n{SEPARATOR}" in printed
  assert sampled(model, params, "The function", seed=0) != [expected]  # the seed picked it


def test_the_closing_sample_draws_with_nanogpt_s_settings():
  """temperature 0.8 and top_k 200, as `python -m jaxgpt.sample` draws by default."""
  model, params = tiny_gpt(vocab_size=50304)
  # Logits far apart, as a trained model's: the temperature then changes which tokens are drawn.
  params["wte"]["embedding"] = params["wte"]["embedding"] * 10
  for seed in (0, 1):
    assert decoding.continuation(model, params, "The", max_new_tokens=8, seed=seed) == (
        sampled(model, params, "The", seed=seed)[0])


def test_stop_at_eot_ends_a_sample_before_end_of_text_and_only_when_asked(monkeypatch):
  model, params = tiny_gpt(vocab_size=50304)
  enc = tokenizer.gpt2()
  row = enc.encode_ordinary(" one two") + [tokenizer.EOT_TOKEN] + enc.encode_ordinary(" three")
  monkeypatch.setattr(decoding, "generate", lambda *a, **k: np.array([row, row], np.int32))
  kw = {"num_samples": 2, "max_new_tokens": len(row)}
  assert sampled(model, params, "Count:", stop_at_eot=True, **kw) == ["Count: one two"] * 2
  assert sampled(model, params, "Count:", stop_at_eot=False, **kw) == [
      "Count: one two<|endoftext|> three"] * 2


def test_samples_decode_batch_rows_at_a_time_with_one_compilation(monkeypatch):
  """5 samples in batches of 2: 3 batches of 2 rows (memory holds 2, not 5), the last one's
  extra row dropped, one compiled program; the first batch is the samples 2 give in one."""
  model, params = tiny_gpt(vocab_size=50304)
  rows, keys, real_generate = [], [], decoding.generate

  def generate(m, p, prompts, key, **k):
    rows.append(len(prompts))
    keys.append(jax.random.key_data(key).tolist())
    return real_generate(m, p, prompts, key, **k)

  monkeypatch.setattr(decoding, "generate", generate)
  before = decoding.generate_padded._cache_size()
  texts = sampled(model, params, "A", num_samples=5, batch_rows=2, seed=3)
  assert rows == [2, 2, 2] and len(texts) == 5
  # The seed's key, then keys no token of the first batch draws with (it draws token j with
  # fold_in(key, j)): the same seed gives the same samples, and no batch repeats another's.
  key = jax.random.PRNGKey(3)
  assert keys == [jax.random.key_data(k).tolist() for k in (
      key, jax.random.fold_in(key, decoding.MAX_NEW_TOKENS + 1),
      jax.random.fold_in(key, decoding.MAX_NEW_TOKENS + 2))]
  assert decoding.generate_padded._cache_size() == before + 1
  assert texts[:2] == sampled(model, params, "A", num_samples=2, seed=3)  # batch_rows 32
  assert rows == [2, 2, 2, 2]  # fewer samples than batch_rows decode no more rows than asked
  assert len(set(texts)) == 5  # each batch draws with a key of its own


def test_each_batch_of_samples_is_given_before_the_next_is_decoded(monkeypatch):
  """So `sample --num_samples=1000 | less` shows the first batch at once."""
  model, params = tiny_gpt(vocab_size=50304)
  calls, real_generate = [], decoding.generate
  monkeypatch.setattr(decoding, "generate",
                      lambda *a, **k: calls.append(1) or real_generate(*a, **k))
  texts = sample.sample_texts(model, params, "A", num_samples=4, batch_rows=2,
                              max_new_tokens=2, temperature=0.8, top_k=200, top_p=1.0,
                              stop_at_eot=False, seed=0)
  next(texts), next(texts)
  assert len(calls) == 1
  next(texts)
  assert len(calls) == 2


TINY_SAMPLE = """
import sys
sys.path.insert(0, "tests")
from conftest import tiny_gpt
from jaxgpt import cli, sample
from jaxgpt.interop import weights
model, params = tiny_gpt(vocab_size=50304)
weights.from_flags = lambda: (None, model, params, "a tiny model")
sample._define_flags()
sys.argv[0] = "sample"
cli.run(sample.main)
"""


def test_sample_top_k_0_keeps_every_token():
  """--top_k=0, as its help says ('0 keeps all'): the samples of no top-k, not an error."""
  r = run_python("-c", TINY_SAMPLE, "--top_k=0", "--start=A", "--num_samples=2",
                 "--max_new_tokens=6", "--seed=3")
  assert r.returncode == 0, r.stderr[-2000:]
  model, params = tiny_gpt(vocab_size=50304)
  expected = sampled(model, params, "A", num_samples=2, max_new_tokens=6, top_k=None, seed=3)
  assert r.stdout == "".join(f"{text}\n{SEPARATOR}\n" for text in expected)


def test_sample_flags_default_to_nanogpt_s_sample_py():
  r = run_python("-m", "jaxgpt.sample", "--help")
  assert r.returncode == 0, r.stderr[-2000:]
  for flag, default in [("max_new_tokens", "500"), ("num_samples", "10"), ("seed", "1337"),
                        ("start", "'\\n'"), ("temperature", "0.8"), ("top_k", "200"),
                        ("top_p", "1.0"), ("[no]stop_at_eot", "False")]:
    said = re.search(rf"^  --{re.escape(flag)}:(.*?)(?=^  --)", r.stdout,
                     re.MULTILINE | re.DOTALL)
    assert said and f"(default {default})" in said[1], flag


DEVICE_MEMORY_AT_MAIN = """
import os, runpy, sys
from jaxgpt import cli
os.environ.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
run = cli.run
cli.run = lambda main, **kw: run(lambda *a: print(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")),
                                 **kw)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(("command", "preallocates"), [
    (["jaxgpt.sample"], False), (["jaxgpt.evaluate"], False),
    (["jaxgpt.export", "--out=x"], False), (["jaxgpt.plan", "--config=configs/quickstart.py"], False),
    (["jaxgpt.bench"], True)], ids=["sample", "evaluate", "export", "plan", "bench"])
def test_a_command_run_beside_training_takes_device_memory_as_it_needs_it(command, preallocates):
  """JAX takes 75% of a GPU at its start; a training run on it holds that share already, so a
  sample, an evaluation, an export or a plan run beside it would find too little left. The
  benchmark wants the device alone, as training does."""
  r = run_python("-c", DEVICE_MEMORY_AT_MAIN, *command)
  assert r.stdout.splitlines()[-1:] == ["None" if preallocates else "false"], r.stderr[-2000:]


EVAL_ONLY_AT_MAIN = """
import os, sys
os.environ.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
import launch
from jaxgpt import cli
launch.run = lambda *a, **k: print(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
sys.argv = ["launch.py", *sys.argv[1:]]
launch._define_flags()
cli.run(launch.main)
"""


@pytest.mark.parametrize(("overrides", "preallocates"), [
    (["--config.init_from=resume", "--config.eval_only=True"], False),
    (["--config.auto_resume=True", "--config.eval_only=True"], False),
    (["--config.init_from=resume"], True), ([], True)],
    ids=["eval_only", "eval_only_auto_resume", "resume", "scratch"])
def test_an_evaluation_of_a_run_beside_its_training_takes_memory_as_needed(overrides,
                                                                            preallocates):
  """launch.py's eval_only on a resume evaluates a checkpoint, beside its training maybe;
  with auto_resume, which picks the resume in `run`, after JAX has taken the device."""
  r = run_python("-c", EVAL_ONLY_AT_MAIN, "--config=configs/quickstart.py", *overrides)
  assert r.stdout.splitlines()[-1:] == ["None" if preallocates else "false"], r.stderr[-2000:]
