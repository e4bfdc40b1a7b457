"""GPT-2's Hugging Face files as export writes them and gpt2 reads their config: what a user's
folder holds, checked without torch or transformers (test_hf.py checks against them)."""

from __future__ import annotations

import errno
import json
import os
import stat

import jax
import numpy as np
import pytest
from conftest import EXPORTABLE, float32_config, run_python, tiny_config

from jaxgpt import tokenizer, train
from jaxgpt.errors import UserError
from jaxgpt.interop import gpt2, weights
from jaxgpt.model import GPT, GPTConfig, init_params


def test_export_refuses_a_directory_that_is_not_empty_and_a_file(tmp_path):
  config = GPTConfig.from_config(float32_config(**EXPORTABLE))
  params = init_params(GPT(config), jax.random.PRNGKey(0))
  gpt2.export(params, config, str(tmp_path / "out"))
  with pytest.raises(UserError, match="out is a directory that is not empty; nothing was written"):
    gpt2.export(params, config, str(tmp_path / "out"))
  (tmp_path / "a_file").write_text("mine")
  with pytest.raises(UserError, match="a_file is a file; nothing was written. Pick a new or "):
    gpt2.export(params, config, str(tmp_path / "a_file"))
  assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.parametrize("failing", ["json", "safetensors", "ctrl-c"])
def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch, failing):
  """A write that fails midway (a full disk, in an OSError or in the error safetensors raises
  for it) or is interrupted leaves neither --out, nor a partial folder, nor the folders made
  for it."""
  import safetensors.numpy

  config = GPTConfig.from_config(float32_config(**EXPORTABLE))

  def full_disk(*args, **kwargs):
    if failing == "json":
      raise OSError(28, "No space left on device", args[0])
    if failing == "ctrl-c":
      raise KeyboardInterrupt
    raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on "
                                      "device (os error 28)")

  if failing == "json":
    monkeypatch.setattr(gpt2, "_write_json", full_disk)
  else:
    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
  expected = (pytest.raises(KeyboardInterrupt) if failing == "ctrl-c" else
              pytest.raises(UserError, match=r"out: writing the export failed \(.*No space left "
                                             r"on device.*\); nothing was left there"))
  with expected:
    gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config,
                str(tmp_path / "new" / "out"))
  assert os.listdir(tmp_path) == []


def test_export_crops_the_padded_vocabulary(tmp_path):
  import safetensors.numpy

  config = float32_config(**{**EXPORTABLE, "vocab_size": 50304})
  params = init_params(GPT(GPTConfig.from_config(config)), jax.random.PRNGKey(0))
  gpt2.export(params, GPTConfig.from_config(config), str(tmp_path / "out"))
  tensors = safetensors.numpy.load_file(str(tmp_path / "out" / "model.safetensors"))
  assert tensors["transformer.wte.weight"].shape == (50257, 8)
  untied = config.copy_and_resolve_references()
  untied.tie_embeddings = False
  params = init_params(GPT(GPTConfig.from_config(untied)), jax.random.PRNGKey(0))
  gpt2.export(params, GPTConfig.from_config(untied), str(tmp_path / "untied"))
  tensors = safetensors.numpy.load_file(str(tmp_path / "untied" / "model.safetensors"))
  assert tensors["lm_head.weight"].shape == tensors["transformer.wte.weight"].shape == (50257, 8)
  with open(tmp_path / "out" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["vocab_size"] == 50257


def test_a_config_json_with_a_null_width_is_refused_by_name(tmp_path):
  """n_inner is held to 4 * n_embd: a hand-edited n_embd of null was a TypeError traceback."""
  (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2, "n_head": 2, '
                                        '"n_embd": null, "n_positions": 16, "vocab_size": 96}')
  with pytest.raises(UserError, match=r"config.json: not a GPT-2 this model can hold: "
                                      r"n_embd=None \(need a positive integer\)$"):
    gpt2.read_config(str(tmp_path))


def test_export_fills_an_existing_empty_directory_in_place(tmp_path):
  config = GPTConfig.from_config(float32_config(**EXPORTABLE))
  out = tmp_path / "shared"
  out.mkdir()
  os.chmod(out, 0o2770)  # a group's folder: setgid, no access for others
  before = os.stat(out)
  gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config, str(out))
  after = os.stat(out)
  assert (after.st_ino, stat.S_IMODE(after.st_mode)) == (before.st_ino, 0o2770)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  assert sorted(os.listdir(tmp_path)) == ["shared"]  # no staging folder left beside it


def test_a_failed_export_into_an_existing_empty_directory_leaves_it_empty(tmp_path, monkeypatch):
  config = GPTConfig.from_config(float32_config(**EXPORTABLE))
  out = tmp_path / "out"
  out.mkdir()

  def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device", args[0])

  monkeypatch.setattr(gpt2, "_write_json", full_disk)
  with pytest.raises(UserError, match="No space left on device"):
    gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config, str(out))
  assert out.is_dir() and os.listdir(out) == [] and os.listdir(tmp_path) == ["out"]


def refuse_hard_links(*args):
  raise PermissionError(errno.EPERM, "Operation not permitted")  # FAT's, some network mounts'


@pytest.mark.parametrize("hard_links", [True, False])
@pytest.mark.parametrize("theirs", ["config.json", "model.safetensors"])
def test_an_export_never_replaces_a_file_another_export_wrote_into_the_same_directory(
    tmp_path, monkeypatch, theirs, hard_links):
  """Two exports to one empty directory at once: the one that moved its files in second
  replaced the first's, one by one, and left a mix of both (say one's config, the other's
  weights). Now the second leaves the first's file and takes back its own, on a filesystem
  without hard links too."""
  config = GPTConfig.from_config(float32_config(**EXPORTABLE))
  out = tmp_path / "out"
  out.mkdir()
  if not hard_links:
    monkeypatch.setattr(os, "link", refuse_hard_links)
  write_files = gpt2._write_files

  def beside_another_export(*args):
    write_files(*args)
    (out / theirs).write_text("the other export's")

  monkeypatch.setattr(gpt2, "_write_files", beside_another_export)
  with pytest.raises(UserError, match=rf"^{out}: {theirs} was written there meanwhile \(by "
                                      r"another export\?\); it is kept, and nothing of this "
                                      "export was left there$"):
    gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config, str(out))
  assert os.listdir(out) == [theirs] and (out / theirs).read_text() == "the other export's"
  assert os.listdir(tmp_path) == ["out"]  # no staging folder left


def test_an_export_keeps_another_exports_file_that_came_after_its_check(tmp_path, monkeypatch):
  """Two exports that both found config.json's name free: the second's rename replaced the
  first's config.json, it then refused at model.safetensors and took back 'its' config.json,
  and the first reported success without one. A hard link is refused where the name is taken."""
  config = GPTConfig.from_config(float32_config(**EXPORTABLE))
  out = tmp_path / "out"
  out.mkdir()
  theirs = os.path.join(os.path.realpath(out), "config.json")

  def after_another_export(move):
    def moved(source, path):
      if path == theirs:  # the other export's move, just before this one's
        (out / "config.json").write_text("the other export's")
      return move(source, path)
    return moved

  monkeypatch.setattr(os, "link", after_another_export(os.link))
  monkeypatch.setattr(os, "rename", after_another_export(os.rename))
  with pytest.raises(UserError, match="config.json was written there meanwhile"):
    gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config, str(out))
  assert os.listdir(out) == ["config.json"]
  assert (out / "config.json").read_text() == "the other export's"


def test_export_fills_a_directory_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
  config = GPTConfig.from_config(float32_config(**EXPORTABLE))
  (tmp_path / "out").mkdir()
  monkeypatch.setattr(os, "link", refuse_hard_links)
  gpt2.export(init_params(GPT(config), jax.random.PRNGKey(0)), config, str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
  assert os.listdir(tmp_path) == ["out"]  # no staging folder left


def test_export_step_writes_that_checkpoint(tmp_path, token_dir):
  from safetensors.numpy import load_file
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=2, vocab_size=50304)
  train.train(config)
  to = tmp_path / "hf"
  r = run_python("-m", "jaxgpt.export", f"--out_dir={config.out_dir}", f"--out={to}", "--step=2")
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"step 2 to {to}" in r.stdout
  exported = load_file(str(to / "model.safetensors"))["transformer.wte.weight"]
  for step, same in ((2, True), (4, False)):
    wte = np.asarray(weights.from_run(config.out_dir, step)[1]["wte"]["embedding"])
    assert np.array_equal(exported, wte[:tokenizer.N_VOCAB]) == same, step
