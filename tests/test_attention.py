"""The attention kernel: 'auto' by device, and a fallback when cuDNN's fails on this machine."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from conftest import fake_device, records, tiny_config

import launch
from jaxgpt import attention, sharding
from jaxgpt.errors import UserError, first_line


def test_only_a_cuda_capability_counts():
  assert attention.capability(fake_device("gpu", "8.9")) == (8, 9)
  assert attention.capability(fake_device("gpu", "10.0")) == (10, 0)  # B200
  assert attention.capability(fake_device("gpu", "gfx90a")) is None  # ROCm MI250
  assert attention.capability(fake_device("tpu", "9.0")) is None
  assert attention.for_device("auto", "bfloat16", 64, fake_device("gpu", "gfx942")) == "xla"


@pytest.mark.parametrize("device, dtype, head_size, expected", [
    (fake_device("gpu", "9.0"), "bfloat16", 64, "cudnn"),  # H100
    (fake_device("gpu", "8.9"), "bfloat16", 64, "cudnn"),  # RTX 4070
    (fake_device("gpu", "8.0"), "bfloat16", 64, "cudnn"),  # A100: the first flash-attention card
    (fake_device("gpu", "9.0"), "float16", 64, "cudnn"),
    (fake_device("gpu", "9.0"), "bfloat16", 128, "cudnn"),  # the largest head it takes
    (fake_device("gpu", "9.0"), "bfloat16", 24, "cudnn"),  # a multiple of 8, not of 16
    (fake_device("gpu", "7.5"), "bfloat16", 64, "xla"),  # T4: no flash attention
    (fake_device("gpu", "9.0"), "float32", 64, "xla"),
    (fake_device("gpu", "9.0"), "bfloat16", 36, "xla"),  # not a multiple of 8
    (fake_device("gpu", "9.0"), "bfloat16", 256, "xla"),  # over 128
    (fake_device("cpu"), "bfloat16", 64, "xla"),
])
def test_auto_attention_picks_cudnn_where_it_runs(device, dtype, head_size, expected):
  assert attention.for_device("auto", dtype, head_size, device) == expected
  assert attention.for_device("xla", dtype, head_size, device) == "xla"
  # An explicit cudnn is kept: settle's probe, not this rule, says whether it runs here.
  assert attention.for_device("cudnn", dtype, head_size, device) == "cudnn"


@pytest.fixture
def cudnn_fails(monkeypatch):
  """This machine 'has' cuDNN attention, and it fails as Ada cards have been seen to."""
  monkeypatch.setattr(attention, "for_device",
                      lambda requested, *a: "cudnn" if requested != "xla" else "xla")

  def probe(*args):
    raise RuntimeError("cuDNN Frontend error: No valid engine configs for SDPA_BPROP")

  monkeypatch.setattr(attention, "probe", probe)


def test_auto_falls_back_to_xla_with_one_warning(tmp_path, cudnn_fails, caplog):
  config = tiny_config(tmp_path, "", attention="auto")
  assert attention.settle(config).attention == "xla"
  assert config.attention == "auto"  # the given config is left as it was
  warnings = [r.getMessage() for r in caplog.records if "cuDNN attention fails" in r.getMessage()]
  assert len(warnings) == 1 and "No valid engine configs" in warnings[0]


def test_a_cudnn_that_works_is_what_the_run_uses(tmp_path, monkeypatch):
  monkeypatch.setattr(attention, "for_device", lambda *a: "cudnn")
  monkeypatch.setattr(attention, "probe", lambda *a: None)
  assert attention.settle(tiny_config(tmp_path, "", attention="auto")).attention == "cudnn"


def test_a_cudnn_that_fails_on_another_host_is_left_by_all(tmp_path, monkeypatch, caplog):
  """Hosts whose cuDNN differed would compile different programs: all run XLA's."""
  monkeypatch.setattr(attention, "for_device", lambda *a: "cudnn")
  monkeypatch.setattr(attention, "probe", lambda *a: None)  # it works here ...
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(sharding.multihost_utils, "process_allgather",
                      lambda ok: np.array([ok, 0]))  # ... and not on process 1
  assert attention.settle(tiny_config(tmp_path, "", attention="auto")).attention == "xla"
  assert "FailedElsewhere: cuDNN's attention failed on process(es) [1]" in caplog.text


def test_an_explicit_cudnn_that_fails_is_an_error(tmp_path, cudnn_fails):
  with pytest.raises(UserError, match="attention=cudnn fails .*--config.attention=xla"):
    attention.settle(tiny_config(tmp_path, "", attention="cudnn"))


def test_a_run_whose_cudnn_fails_trains_with_xla(tmp_path, token_dir, cudnn_fails, caplog):
  config = tiny_config(tmp_path, token_dir, max_iters=4, eval_interval=4, attention="auto")
  with caplog.at_level(logging.INFO, logger="absl"):
    launch.run(config)
  assert "using XLA's attention instead" in caplog.text
  assert "float32 activations, xla attention" in caplog.text
  assert len(records(config.out_dir, "train")) == 4


def test_the_probe_runs_the_kernel_and_raises_where_it_fails():
  assert attention.probe("xla", "float32", 16, 32) is None  # a forward and backward pass
  with pytest.raises(RuntimeError, match="cuDNN"):  # as a failing cuDNN does on a GPU
    attention.probe("cudnn", "float32", 16, 32)


def test_the_probe_takes_the_backward_pass_where_cudnn_can_fail_alone(monkeypatch):
  """cuDNN's "No valid engine configs" can come from the backward pass alone (SDPA_BPROP): a
  kernel whose forward pass works is refused where its gradient fails."""
  @jax.custom_vjp
  def forward_only(q, k, v):
    return q

  def backward(_, g):
    raise RuntimeError("no valid engine configs for SDPA_BPROP")

  forward_only.defvjp(lambda q, k, v: (q, None), backward)
  monkeypatch.setattr(jax.nn, "dot_product_attention", lambda q, k, v, **_: forward_only(q, k, v))
  with pytest.raises(RuntimeError, match="SDPA_BPROP"):
    attention.probe("xla", "float32", 16, 32)


def test_settle_probes_the_runs_shapes_on_a_cudnn_gpu_and_keeps_an_explicit_xla(
    tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "devices", lambda: [fake_device("gpu", "9.0", "NVIDIA H100")])
  probed = []
  monkeypatch.setattr(attention, "probe", lambda *args: probed.append(args))
  config = tiny_config(tmp_path, "", dtype="bfloat16", n_embd=64, n_head=2, block_size=16)
  assert attention.settle(config).attention == "cudnn"
  assert probed == [("cudnn", "bfloat16", 32, 16)]  # the run's head size (64 / 2) and length
  config.attention = "xla"
  assert attention.settle(config).attention == "xla"  # as asked, and nothing probed
  assert len(probed) == 1


def test_a_failing_cudnn_is_named_in_one_short_line(tmp_path, monkeypatch, caplog):
  """cuDNN's errors run to pages of engine dumps: the warning keeps their first line, cut."""
  monkeypatch.setattr(attention, "for_device", lambda *a: "cudnn")

  def probe(*args):
    raise RuntimeError("cuDNN Frontend error: No valid engine configs for SDPA_BPROP\n"
                       + "engine 7: knob dump " * 100)

  monkeypatch.setattr(attention, "probe", probe)
  with caplog.at_level(logging.WARNING):
    assert attention.settle(tiny_config(tmp_path, "", attention="auto")).attention == "xla"
  [warning] = [r.getMessage() for r in caplog.records if "cuDNN attention fails" in r.getMessage()]
  assert "No valid engine configs" in warning and "knob dump" not in warning
  assert first_line(RuntimeError("x" * 1000)) == "x" * 300
  assert first_line(RuntimeError()) == ""  # a library error without a message
