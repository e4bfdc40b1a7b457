"""A nanoGPT ckpt.pt, written here in nanoGPT's format, read back and checked against transformers."""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_VOCAB, hf_logits, records, run_python, tiny_config, write_hellaswag

import launch
from jaxgpt import data, run_dir
from jaxgpt.errors import UserError
from jaxgpt.interop import nanogpt, weights
from jaxgpt.model import GPT, GPTConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYER, N_HEAD, N_EMBD, BLOCK = 2, 2, 32, 16
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def write_nanogpt_ckpt(path, *, bias: bool, vocab_size: int = TINY_VOCAB, compiled: bool = True):
  """nanoGPT's train.py checkpoint of a random GPT, and the same weights as transformers' GPT-2.

  nanoGPT's Linear weights are (out, in), transformers' Conv1D ones (in, out);
  without bias nanoGPT has no bias tensors at all (transformers' are zeroed);
  under torch.compile every name starts with '_orig_mod.'.
  """
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, n_positions=BLOCK, vocab_size=vocab_size,
      activation_function="gelu", bos_token_id=None, eos_token_id=None)).eval()
  state = {}
  prefix = "_orig_mod." if compiled else ""
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(0.0, 0.3)
      if name.endswith(".bias") and not bias:
        p.zero_()
        continue
      linear = name.endswith(".weight") and any(f".{m}." in name for m in LINEARS)
      state[prefix + name] = p.detach().T.clone() if linear else p.detach().clone()
  state[prefix + "lm_head.weight"] = state[prefix + "transformer.wte.weight"]
  for i in range(N_LAYER):  # the causal-mask buffer nanoGPT keeps without flash attention
    state[f"{prefix}transformer.h.{i}.attn.bias"] = torch.tril(
        torch.ones(BLOCK, BLOCK)).view(1, 1, BLOCK, BLOCK)
  model_args = {"n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD, "block_size": BLOCK,
                "bias": bias, "vocab_size": vocab_size, "dropout": 0.0}
  torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []},
              "model_args": model_args, "iter_num": 250, "best_val_loss": torch.tensor(1.5),
              "config": {"batch_size": 12, "dataset": "shakespeare_char"}}, str(path))
  return model


@pytest.mark.parametrize("bias", [False, True])
def test_a_nanogpt_checkpoint_gives_the_logits_of_transformers(tmp_path, bias):
  theirs = write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=bias)
  arch, params, iter_num = nanogpt.read(str(tmp_path / "ckpt.pt"))
  assert arch == {"n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD, "block_size": BLOCK,
                  "bias": bias, "vocab_size": TINY_VOCAB, "gelu_approximate": False,
                  "tie_embeddings": True}
  assert iter_num == 250
  tokens_BT = np.random.default_rng(0).integers(0, TINY_VOCAB, (3, BLOCK))
  ours = np.asarray(GPT(GPTConfig(**arch)).apply({"params": params}, jnp.asarray(tokens_BT)))
  expected = hf_logits(theirs, tokens_BT)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_training_continues_from_a_nanogpt_checkpoint_with_its_architecture(tmp_path,
                                                                            token_dir):
  theirs = write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False, compiled=False)
  config = tiny_config(tmp_path, token_dir, init_from=f"nanogpt:{tmp_path / 'ckpt.pt'}",
                       n_layer=1, n_embd=64, block_size=8, gelu_approximate=True, max_iters=1,
                       eval_interval=1, warmup_iters=0, tie_embeddings=False)
  launch.run(config)
  # The architecture is the checkpoint's; a smaller block_size crops the positions.
  ran = run_dir.RunDir(config.out_dir).read_config()
  assert (ran["n_layer"], ran["n_embd"], ran["bias"], ran["gelu_approximate"],
          ran["tie_embeddings"]) == (N_LAYER, N_EMBD, False, False, True)
  val = data.open_split(config.data_dir, "val", config.block_size, config.vocab_size)
  losses = []
  for batch in data.eval_batches(val, batch_size=config.batch_size, n_batches=config.eval_iters,
                                 seed=config.seed):
    batch = torch.tensor(np.asarray(batch, np.int64))
    logits = torch.tensor(hf_logits(theirs, batch[:, :-1].numpy()))
    losses.append(torch.nn.functional.cross_entropy(
        logits.reshape(-1, TINY_VOCAB), batch[:, 1:].reshape(-1)).item())
  evals = records(config.out_dir, "eval")
  assert evals[0]["val_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
  assert [r["iter"] for r in evals] == [0, 1]  # and a step trained from there


def test_auto_resume_goes_on_from_a_nanogpt_start_with_the_run_s_architecture(tmp_path,
                                                                            token_dir):
  """The rerun command still says init_from=nanogpt:, whose weights gave the run their
  architecture, not the recipe's: with auto_resume the run resumes its checkpoint as it ran."""
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False, compiled=False)
  config = tiny_config(tmp_path, token_dir, init_from=f"nanogpt:{tmp_path / 'ckpt.pt'}",
                       n_layer=1, n_embd=64, block_size=8, gelu_approximate=True, max_iters=1,
                       eval_interval=1, warmup_iters=0, tie_embeddings=False, auto_resume=True)
  launch.run(config)
  config.max_iters = 2
  (tmp_path / "run" / "config.json").write_text("{")  # the checkpoints hold the architecture
  launch.run(config)
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 1, 2]
  assert run_dir.RunDir(config.out_dir).read_config()["n_layer"] == N_LAYER
  # The command edited to start from other weights: the run is not theirs, so not resumed.
  write_nanogpt_ckpt(tmp_path / "biased.pt", bias=True, compiled=False)
  config.init_from, config.max_iters = f"nanogpt:{tmp_path / 'biased.pt'}", 3
  with pytest.raises(UserError, match=r"auto_resume: \S+/run/checkpoints holds a run that did "
                                      r"not start from init_from=nanogpt:\S+biased.pt's weights "
                                      r"\(bias=False where they have True\)"):
    launch.run(config)
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 1, 2]
  # The run's own ckpt.pt moved away since it started: resumed, with a warning.
  config.init_from = f"nanogpt:{tmp_path / 'moved.pt'}"
  launch.run(config)
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 1, 2, 3]


def test_auto_resume_refuses_a_gpt2_size_other_than_the_run_s():
  saved = {"n_layer": 12, "n_embd": 768, "n_head": 12, "block_size": 512}
  weights.check_started_from("gpt2", saved, "out/checkpoints")  # the run's own: resumed
  with pytest.raises(UserError, match=r"auto_resume: out/checkpoints holds a run that did not "
                                      r"start from init_from=gpt2-medium's weights \(n_layer=12 "
                                      r"where they have 24, n_embd=768 where they have 1024\)"):
    weights.check_started_from("gpt2-medium", saved, "out/checkpoints")


def test_a_file_that_is_not_a_nanogpt_checkpoint_is_refused_by_name(tmp_path):
  torch.save({"model": {}}, str(tmp_path / "no_args.pt"))
  with pytest.raises(UserError, match="no_args.pt: not a nanoGPT checkpoint.*model_args"):
    nanogpt.read(str(tmp_path / "no_args.pt"))
  torch.save({"model": {}, "model_args": {"n_layer": 1}}, str(tmp_path / "short.pt"))
  with pytest.raises(UserError, match=r"short.pt: model_args lacks \['n_head'"):
    nanogpt.read(str(tmp_path / "short.pt"))
  (tmp_path / "text.pt").write_text("not a checkpoint")
  with pytest.raises(UserError, match="text.pt: not a PyTorch checkpoint"):
    nanogpt.read(str(tmp_path / "text.pt"))
  # Text torch.load's legacy reader fails on with KeyError or IndexError (were tracebacks), or
  # whose refusal was torch's page of advice cut at 300 characters.
  for text in ("hi\n", "ROMEO:\n", "# A title\n", ""):  # torch 2.13: KeyError, IndexError, ...
    (tmp_path / "notes.txt").write_text(text)
    with pytest.raises(UserError) as e:
      nanogpt.read(str(tmp_path / "notes.txt"))
    assert re.fullmatch(rf"{tmp_path / 'notes.txt'}: not a PyTorch checkpoint torch.load can "
                        r"read \(\w[^\n]*\w\)", str(e.value)), str(e.value)
    assert "weights_only" not in str(e.value)  # torch's page of advice, cut short
  # A fork's numpy value in its config: torch's page of advice comes down to the object.
  torch.save({"model": {}, "model_args": {}, "config": {"lr": np.float64(6e-4)}},
             str(tmp_path / "numpy.pt"))
  with pytest.raises(UserError, match=r"numpy.pt: holds numpy\S*scalar, which is not unpickled "
                                      r"\(it could run code\)") as e:
    nanogpt.read(str(tmp_path / "numpy.pt"))
  assert "\n" not in str(e.value)

  class Shell:  # what a malicious file pickles; torch names it in other words
    def __reduce__(self):
      return os.system, ("true",)

  torch.save({"model": {"wte": Shell()}, "model_args": {}}, str(tmp_path / "shell.pt"))
  with pytest.raises(UserError, match=r"shell.pt: holds \S*system, which is not unpickled"):
    nanogpt.read(str(tmp_path / "shell.pt"))
  args = {"n_layer": None, "n_head": 2, "n_embd": 32, "block_size": 16, "bias": False,
          "vocab_size": 96}
  for name, ckpt, says in (
      ("list", {"model": [], "model_args": args}, "not a nanoGPT checkpoint"),
      ("none", {"model": {}, "model_args": args}, "model_args holds a value that is not a number"),
      ("str", {"model": {"wte": "x"}, "model_args": {**args, "n_layer": 2}},
       "model\\['wte'\\] is a str, not a tensor"),
      ("heads", {"model": {}, "model_args": {**args, "n_layer": 2, "n_head": 3}},
       "model_args n_embd=32 does not split into n_head=3 heads"),
      ("empty", {"model": {}, "model_args": {**args, "n_layer": 2, "vocab_size": 0}},
       r"model_args vocab_size=0 \(need a positive integer\)"),
      ("heads0", {"model": {}, "model_args": {**args, "n_layer": 2, "n_head": 0}},
       r"model_args n_head=0 \(need a positive integer\)")):
    torch.save(ckpt, str(tmp_path / f"{name}.pt"))
    with pytest.raises(UserError, match=f"{name}.pt: {says}"):
      nanogpt.read(str(tmp_path / f"{name}.pt"))
  with pytest.raises(UserError, match="nanogpt:.*missing.pt: no such file"):
    weights.load(f"nanogpt:{tmp_path / 'missing.pt'}", out_dir="")
  with pytest.raises(UserError, match=f"nanogpt:{tmp_path}: a folder without a ckpt.pt"):
    weights.load(f"nanogpt:{tmp_path}", out_dir="")
  with pytest.raises(UserError, match=r"^--init_from=nanogpt:: name the ckpt.pt after it \("):
    weights.load("nanogpt:", out_dir="")
  with pytest.raises(UserError, match="--init_from=gpt3: must be 'resume'"):
    weights.load("gpt3", out_dir="")


def test_a_ckpt_pt_in_torchs_legacy_format_is_read(tmp_path):
  """torch.save(..., _use_new_zipfile_serialization=False), which cannot be memory-mapped."""
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False)
  legacy = tmp_path / "legacy.pt"
  torch.save(torch.load(tmp_path / "ckpt.pt", weights_only=True), legacy,
             _use_new_zipfile_serialization=False)
  arch, params, it = nanogpt.read(str(legacy))
  expected_arch, expected, _ = nanogpt.read(str(tmp_path / "ckpt.pt"))
  assert (arch, it) == (expected_arch, 250)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_nanogpt_out_dir_names_its_ckpt_pt(tmp_path):
  """nanoGPT's out_dir, as its own init_from=resume reads it."""
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False)
  arch, _, it = nanogpt.read(str(tmp_path))
  assert it == 250 and arch == nanogpt.read(str(tmp_path / "ckpt.pt"))[0]


def test_commands_reading_a_nanogpt_out_dir_as_a_run_name_its_ckpt_pt(tmp_path):
  """nanoGPT's `sample.py --out_dir=out-shakespeare`, typed as it was."""
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False)
  with pytest.raises(UserError, match=re.escape(
      f"{tmp_path / 'ckpt.pt'} is nanoGPT's, which sample and evaluate read with "
      f"--init_from=nanogpt:{tmp_path / 'ckpt.pt'} in place of --out_dir")):
    weights.run_steps(str(tmp_path))


def test_a_block_size_past_the_checkpoints_positions_names_the_value_that_fits(tmp_path,
                                                                             token_dir):
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False)
  config = tiny_config(tmp_path, token_dir, init_from=f"nanogpt:{tmp_path / 'ckpt.pt'}",
                       block_size=2 * BLOCK)
  with pytest.raises(UserError, match=f"exceeds the {BLOCK} positions of .*: set "
                     f"--config.block_size={BLOCK} \\(or less\\)"):
    launch.run(config)


def test_evaluate_cli_reads_a_nanogpt_checkpoint(tmp_path):
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False, vocab_size=50304)
  hs = write_hellaswag(tmp_path / "hs.jsonl", 4)
  r = run_python("-m", "jaxgpt.evaluate", f"--init_from=nanogpt:{tmp_path / 'ckpt.pt'}",
                 "--task=hellaswag", f"--hellaswag_file={hs}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "ckpt.pt (nanoGPT iter 250)" in r.stderr
  assert "hellaswag: acc " in r.stdout and "over 4 examples" in r.stdout


def test_the_weights_vocabulary_is_known_before_they_are_read(tmp_path):
  """evaluate refuses a character-level ckpt.pt for HellaSwag before HellaSwag's download."""
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False)
  assert weights.check_choice(f"nanogpt:{tmp_path}", out_dir="")[0] == TINY_VOCAB
  assert weights.check_choice("gpt2", out_dir="") == (50257, 1024)


def test_a_character_level_ckpt_pts_eval_tasks_are_refused_before_their_files(tmp_path,
                                                                              token_dir):
  """launch.py, as evaluate: HellaSwag's file (a download) is not fetched for weights that
  cannot read it."""
  write_nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False)
  config = tiny_config(tmp_path, token_dir, init_from=f"nanogpt:{tmp_path / 'ckpt.pt'}",
                       block_size=8, eval_tasks="hellaswag", vocab_size=50304,  # the recipe's
                       hellaswag_file=str(tmp_path / "not_here.jsonl"))
  with pytest.raises(UserError, match=f"vocab_size={TINY_VOCAB} cannot hold GPT-2's"):  # the ckpt's
    launch.run(config)
