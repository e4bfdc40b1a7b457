"""Config overrides from the command line, and the errors that name a bad key."""

from __future__ import annotations

import subprocess

import pytest
from conftest import run_python

from jaxgpt import defaults


def launch(*args: str) -> subprocess.CompletedProcess:
  return run_python("launch.py", *args)


def test_unknown_key_is_an_error_naming_it():
  r = launch("--config=configs/quickstart.py", "--config.max_iterz=10")
  assert r.returncode != 0
  assert "max_iterz" in r.stderr


def test_wrong_type_is_an_error_naming_the_key():
  r = launch("--config=configs/quickstart.py", "--config.max_iters=lots")
  assert r.returncode != 0
  assert "max_iters" in r.stderr


def test_invalid_value_is_an_error_naming_the_key(tmp_path):
  r = launch("--config=configs/quickstart.py", "--config.n_head=3",
             f"--config.out_dir={tmp_path}")
  assert r.returncode != 0
  assert "config.n_embd=128: must be divisible by n_head=3" in r.stderr


def test_missing_data_says_how_to_make_it(tmp_path):
  r = launch("--config=configs/fineweb_40m.py", f"--config.data_dir={tmp_path / 'none'}",
             f"--config.out_dir={tmp_path / 'run'}")
  assert r.returncode != 0
  assert "python -m jaxgpt.prepare fineweb" in r.stderr
  assert str(tmp_path / "none") in r.stderr


@pytest.mark.parametrize("key,value,message", [
    ("dtype", "float64", "must be one of"),
    ("attention", "flash", "must be one of"),
    ("remat", "block", "must be one of"),
    ("loss_chunk_size", -1, "must be >= 0"),
    ("lr_decay_iters", 10, "must be greater than warmup_iters"),
    ("min_lr", 1.0, "must be in [0, learning_rate"),
    ("dropout", 1.0, "must be in [0, 1)"),
])
def test_validate_names_the_key(key, value, message):
  c = defaults.get_config()
  c.warmup_iters = 100
  c[key] = value
  with pytest.raises(ValueError, match=f"config.{key}=") as e:
    defaults.validate(c)
  assert message in str(e.value)


def test_type_is_checked_on_assignment():
  c = defaults.get_config()
  with pytest.raises(TypeError):
    c.max_iters = "lots"
