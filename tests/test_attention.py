"""The attention kernel: 'auto' by device, and a fallback when cuDNN's fails on this machine."""

from __future__ import annotations

import logging
import types

import pytest
from conftest import records, tiny_config

from jaxgpt import attention, train
from jaxgpt.errors import UserError


def fake_device(platform: str, compute_capability: str | None = None, kind: str = "x"):
  return types.SimpleNamespace(platform=platform, compute_capability=compute_capability,
                               device_kind=kind)


def test_only_a_cuda_capability_counts():
  assert attention.compute_capability(fake_device("gpu", "8.9")) == (8, 9)
  assert attention.compute_capability(fake_device("gpu", "10.0")) == (10, 0)  # B200
  assert attention.compute_capability(fake_device("gpu", "gfx90a")) is None  # ROCm MI250
  assert attention.compute_capability(fake_device("tpu", "9.0")) is None
  assert attention.implementation("auto", "bfloat16", 64, fake_device("gpu", "gfx942")) == "xla"


@pytest.fixture
def cudnn_fails(monkeypatch):
  """This machine 'has' cuDNN attention, and it fails as Ada cards have been seen to."""
  monkeypatch.setattr(attention, "implementation",
                      lambda requested, *a: "cudnn" if requested != "xla" else "xla")

  def probe(*args):
    raise RuntimeError("cuDNN Frontend error: No valid engine configs for SDPA_BPROP")

  monkeypatch.setattr(attention, "probe", probe)


def test_auto_falls_back_to_xla_with_one_warning(tmp_path, cudnn_fails, caplog):
  config = tiny_config(tmp_path, "", attention="auto")
  assert attention.settle(config) == "xla" and config.attention == "xla"
  warnings = [r.getMessage() for r in caplog.records if "cuDNN attention fails" in r.getMessage()]
  assert len(warnings) == 1 and "No valid engine configs" in warnings[0]


def test_an_explicit_cudnn_that_fails_is_an_error(tmp_path, cudnn_fails):
  with pytest.raises(UserError, match="attention=cudnn fails .*--config.attention=xla"):
    attention.settle(tiny_config(tmp_path, "", attention="cudnn"))


def test_a_run_whose_cudnn_fails_trains_with_xla(tmp_path, token_dir, cudnn_fails, caplog):
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=4, attention="auto")
  with caplog.at_level(logging.INFO, logger="absl"):
    train.train(config)
  assert "using XLA's attention instead" in caplog.text
  assert "xla attention (config: xla)" in caplog.text
  assert len(records(config.out_dir, "train")) == 4


def test_the_probe_runs_xla_attention_here():
  attention.probe("xla", "float32", 16, 32)  # the real probe: a forward and backward pass
