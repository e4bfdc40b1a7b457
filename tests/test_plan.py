"""The run plan: its figures against hand-computed ones, its warnings, its CLI and launch log."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import sys
import types

import jax
import pytest
from conftest import ROOT, fake_device, pattern_tokens, recipe, run_python, step_of, tiny_config

from jaxgpt import (
  data,
  formatting,
  gpus,
  report,
  run_dir,
  sharding,
  summary,
  token_files,
  train,
  train_step,
)
from jaxgpt.errors import UserError
from jaxgpt.model import GPT, GPTConfig, count_params, init_params
from jaxgpt.plan import iters, memory, targets
from jaxgpt.prep import datasets, shards

GiB = 2**30



def estimate_flags(device: str, mfu: float, peak_flops: float = 0.0) -> types.SimpleNamespace:
  """python -m jaxgpt.plan's flags that plan_cli._throughput reads, no --tokens_per_sec given:
  an estimate for `device` at `mfu`."""
  return types.SimpleNamespace(tokens_per_sec=0.0, device=device, peak_flops=peak_flops, mfu=mfu)

def test_fineweb_40m_figures_match_hand_computed_ones():
  config = recipe("fineweb_40m")
  p = summary.summarize(config, train_tokens=100 * 100_000_000)  # 100 shards of 100M tokens
  # 12 layers x 12 D^2 + tied embedding 50304 D + LayerNorm scales (2 per layer + final), D=384
  assert p.n_params == 12 * 12 * 384**2 + 50304 * 384 + (12 * 2 + 1) * 384 == 40_560_000
  assert p.n_params_total == p.n_params + 1024 * 384
  assert p.tokens_per_iter == 16 * 32 * 1024 == 524_288
  assert p.max_iters == 20_000
  assert p.tokens == 10_485_760_000
  assert p.epochs == pytest.approx(1.048576)
  assert p.tokens_per_param == pytest.approx(10_485_760_000 / 40_560_000)
  flops_per_token = 6 * 40_560_000 + 12 * 12 * 6 * 64 * 1024
  assert p.flops == pytest.approx(flops_per_token * 10_485_760_000)
  assert step_of(config).tokens_per_iter(n_devices=8) == 8 * 524_288
  # A resume at 10,000 whose first half ran at half the batch: the tokens before it count as
  # they were trained, the rest at the layout it resumes with.
  r = summary.summarize(config, train_tokens=100 * 100_000_000, start_iter=10_000,
                        start_tokens=10_000 * 262_144)
  assert r.tokens == 10_000 * 262_144 + 10_000 * 524_288
  assert r.epochs == pytest.approx(r.tokens / 10_000_000_000)


def test_param_counts_agree_with_the_built_model(tmp_path):
  config = tiny_config(tmp_path, "", bias=True)
  params = init_params(GPT(GPTConfig.from_config(config)), jax.random.PRNGKey(0))
  s = summary.summarize(config)
  assert (s.n_params, s.n_params_total) == (count_params(params),
                                            count_params(params, non_embedding=False))


def test_train_tokens_come_from_shards_or_meta(tmp_path, token_dir):
  # the fixture's two train shards, in windows of 16+1
  assert iters.count_train_tokens(token_dir, 16) == (2999 // 16 + 1999 // 16) * 16
  meta_only = tmp_path / "meta_only"
  meta_only.mkdir()
  shards.write_meta(str(meta_only), {"splits": {"train": {"tokens": 12345}}})
  assert iters.count_train_tokens(str(meta_only), 16) == 12345
  for splits in (["train", "val"], {"train": ["x.bin"], "val": 3}):  # another tool's: no counts
    shards.write_meta(str(meta_only), {"splits": splits})
    assert iters.count_train_tokens(str(meta_only), 16) is None
  assert iters.count_train_tokens(str(tmp_path / "nothing"), 16) is None
  p = summary.summarize(tiny_config(tmp_path, token_dir), train_tokens=None)
  assert p.epochs is None


def test_train_tokens_are_those_the_run_trains_on(tmp_path):
  """A window never spans two files: each file's tail past its last window goes unread, and
  the launch log's epochs (len(windows) x block_size) leave it out; plan's do too."""
  d = tmp_path / "small_shards"
  d.mkdir()
  for i in range(3):  # 24 tokens a file: one 16+1 window each, 8 tokens unread
    shards.write_shard(str(d / f"syn_train_{i:06d}.bin"), pattern_tokens(24, seed=i))
  windows = data.TokenWindows(token_files.find_shards(str(d), "train"), 16)
  assert iters.count_train_tokens(str(d), 16) == len(windows) * 16 == 3 * 16



def test_a_run_from_gpt2s_weights_is_planned_with_their_architecture():
  """launch.py takes init_from=gpt2-medium's 24 x 1024 (and GPT-2's vocabulary, biases, tanh
  GELU) from the weights: plan counted, timed and compiled the recipe's 124M instead."""
  r = run_python("-m", "jaxgpt.plan", "--config=configs/gpt2_124m.py", "--max_iters=100",
                 "--train_tokens=1B", "--config.init_from=gpt2-medium")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert lines[0] == ("plan: init_from=gpt2-medium: the architecture of its weights, as the run "
                      "takes it: n_layer=24, n_head=16, n_embd=1024, vocab_size=50257, bias=True, "
                      "gelu_approximate=True (the config had 12, 12, 768, 50304, False, False)")
  assert lines[1].startswith("configs/gpt2_124m.py: 353.77M parameters (nanoGPT's count; ")
  # The recipe's schedule still follows each candidate (quickstart's warmup: 10% of the run).
  r = run_python("-m", "jaxgpt.plan", "--config=configs/quickstart.py", "--max_iters=10",
                 "--tokens_per_sec=1000", "--config.init_from=gpt2")
  assert r.returncode == 0 and "warning" not in r.stdout, r.stdout

def test_a_run_from_a_nanogpt_checkpoint_is_planned_with_its_architecture(tmp_path):
  """launch.py takes a ckpt.pt's model_args: plan counted the recipe's 7.23M instead."""
  torch = pytest.importorskip("torch")
  args = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128, "bias": True,
          "vocab_size": 50304, "dropout": 0.0}
  torch.save({"model": {}, "model_args": args}, str(tmp_path / "ckpt.pt"))
  r = run_python("-m", "jaxgpt.plan", "--config=configs/quickstart.py", "--max_iters=10",
                 "--tokens_per_sec=1000", f"--config.init_from=nanogpt:{tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert lines[0] == (f"plan: init_from=nanogpt:{tmp_path}: the architecture of its weights, as "
                      "the run takes it: n_layer=2, n_head=2, n_embd=64, bias=True (the config "
                      "had 4, 4, 128, False)")
  assert lines[1].startswith("configs/quickstart.py: 3.32M parameters")


def test_a_plan_from_weights_refuses_what_launch_refuses_and_reads_a_local_gpt2(tmp_path,
                                                                                 monkeypatch,
                                                                                 capsys):
  from jaxgpt.plan import __main__ as plan_cli
  with pytest.raises(UserError, match="exceeds the 1024 positions of gpt2"):
    plan_cli._weights_architecture("gpt2", "", GPTConfig(block_size=2048))
  with pytest.raises(UserError, match="loads GPT-2-architecture weights; this config has "
                     "pos_emb=rope"):
    plan_cli._weights_architecture("gpt2", "", GPTConfig(pos_emb="rope"))
  # A local checkpoint's own config.json, not the size's usual one: a vocabulary grown, say.
  hf = {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 512,
        "vocab_size": 50400, "tie_word_embeddings": False}
  (tmp_path / "config.json").write_text(json.dumps(hf))
  arch = plan_cli._weights_architecture("gpt2", str(tmp_path), GPTConfig(block_size=256))
  assert (arch["vocab_size"], arch["tie_embeddings"], "block_size" in arch) == (50400, False,
                                                                                False)
  with pytest.raises(UserError, match="exceeds the 512 positions"):
    plan_cli._weights_architecture("gpt2", str(tmp_path), GPTConfig(block_size=1024))
  # Without torch a ckpt.pt is not read: the plan says it is of the config's architecture.
  monkeypatch.setitem(sys.modules, "torch", None)
  assert plan_cli._weights_architecture("nanogpt:ckpt.pt", "", GPTConfig()) == {}
  assert "needs PyTorch" in capsys.readouterr().out


def test_stated_sizes():
  assert summary.stated_sizes("gpt2_124m") == [("124m", 124e6)]
  assert summary.stated_sizes("run-1.5B-v2") == [("1.5B", 1.5e9)]
  assert summary.stated_sizes("40M") == [("40M", 40e6)]
  for name in ("fineweb10B", "sample-10BT", "gpt2", "bs32m", "out"):
    assert summary.stated_sizes(name) == []


def fineweb_40m(**overrides):
  config = recipe("fineweb_40m")
  config.update(overrides)
  return config


@pytest.mark.parametrize("overrides,config_file,expected", [
    ({"out_dir": "out/gpt2_124m"}, "", "out_dir 'out/gpt2_124m' says 124m"),
    ({}, "gpt2_350m", "config 'gpt2_350m' says 350m"),
    ({"wandb_log": True, "wandb_run_name": "fw-1.5b"}, "", "wandb_run_name 'fw-1.5b' says 1.5b"),
    ({"lr_decay_iters": 30_000}, "", "lr_decay_iters=30,000 differs from max_iters=20,000"),
    ({"lr_decay_iters": 10_000}, "", "the last 10,000 iterations run at min_lr"),
    ({"warmup_iters": 2_600}, "", "warmup_iters=2,600 is 13% of max_iters=20,000"),
    ({"max_iters": 200_000, "lr_decay_iters": 200_000}, "", "10.5 epochs"),
])
def test_each_warning_fires(overrides, config_file, expected):
  config = fineweb_40m(**overrides)
  p = summary.summarize(config, train_tokens=10_000_000_000)
  found = summary.check(config, p, config_file=config_file)
  assert len(found) == 1 and expected in found[0], found


def test_fsdp_over_devices_that_split_no_matrix_is_warned_of():
  """5 divides none of fineweb_40m's dimensions (384, 1152, 1536, 1024, 50304): every device
  kept the whole state, and only `plan`'s CPU estimate said so, not the launch log."""
  config = fineweb_40m(sharding="fsdp")
  [found] = summary.check(config, summary.summarize(config, n_devices=5))
  assert found.startswith("sharding=fsdp splits no matrix over 5 devices (5 divides none of ")
  for n_devices in (1, 8):
    assert summary.check(config, summary.summarize(config, n_devices=n_devices)) == []


def test_bfloat16_on_a_gpu_without_its_hardware_says_float32_is_as_fast():
  """T4s and V100s (Colab's, older clusters') have no bfloat16 units: XLA computes in float32."""
  config = fineweb_40m()
  p = summary.summarize(config)
  [found] = summary.check(config, p, device=fake_device("gpu", "7.5", kind="Tesla T4"))
  assert found.startswith("dtype=bfloat16 on Tesla T4 (compute capability 7.5), which has no "
                          "bfloat16 hardware")
  assert found.endswith("--config.dtype=float32 trains at float32's precision (with twice the "
                        "activation memory)")
  for device in (fake_device("gpu", "8.0", kind="NVIDIA A100-SXM4-40GB"), fake_device("cpu")):
    assert summary.check(config, p, device=device) == []
  config.dtype = "float32"
  assert summary.check(config, p, device=fake_device("gpu", "7.0", kind="Tesla V100")) == []


def test_a_size_within_tolerance_or_an_unused_run_name_is_silent():
  config = fineweb_40m(out_dir="out/fw_45m", wandb_log=False, wandb_run_name="gpt2_1.5b")
  assert summary.check(config, summary.summarize(config), config_file="fineweb_40m") == []
  config.out_dir = "out/fw_40m_10b"  # the model's size, and its tokens
  assert summary.check(config, summary.summarize(config), config_file="fineweb_40m") == []
  config.out_dir = "out/fw_350m_10b"
  [found] = summary.check(config, summary.summarize(config), config_file="fineweb_40m")
  assert found.startswith("out_dir 'out/fw_350m_10b' says 350m or 10b but the model has")


def test_shipped_recipes_trigger_no_warning(tmp_path):
  python_docs = str(tmp_path / "python_docs")
  datasets.make_python_docs(python_docs)
  # FineWeb sample-10BT is about 9.9B train tokens once tokenized.
  train_tokens = {"python_docs": iters.count_train_tokens(python_docs, 128),
                  "fineweb": 9_900_000_000}
  paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
  assert len(paths) >= 3
  for path in paths:
    name = os.path.splitext(os.path.basename(path))[0]
    config = recipe(name)
    p = summary.summarize(config, train_tokens=train_tokens.get(config.dataset))
    assert summary.check(config, p, config_file=name) == [], name


def test_durations_read_naturally():
  assert formatting.duration(20_000) == "5h33m"
  assert formatting.duration(125) == "2m05s"
  assert formatting.duration(math.inf) == "never"  # the time at a rate of ~0 tokens/s
  assert formatting.duration(1e300) == "3.2e+292 years"  # plan --tokens_per_sec=1e-300
  assert formatting.duration(3 * 365.25 * 86400) == "3 years"
  assert formatting.duration(365.25 * 86400) == "1 year"
  assert formatting.duration(123.4 * 365.25 * 86400) == "123 years"
  assert formatting.count(10_485_760_000) == "10.49B" and formatting.count(512) == "512"
  assert formatting.count(999_994) == "999.99K"
  assert formatting.count(999_999) == "1.00M" and formatting.count(999_995_000) == "1.00B"
  assert formatting.duration(3600) == "1h00m" and formatting.duration(5000) == "1h23m"
  assert formatting.duration(3599.6) == "1h00m" and formatting.duration(59.5) == "1m00s"
  # hours and minutes to the nearest minute (5h59m55s was '5h59m', truncated)
  assert formatting.duration(5 * 3600 + 59 * 60 + 55) == "6h00m"
  assert formatting.duration(5 * 3600 + 33 * 60 + 31) == "5h34m"
  assert formatting.count(1000) == "1.00K" and formatting.count(1e9) == "1.00B"
  assert formatting.plural(1, "shard") == "1 shard" and formatting.plural(0, "shard") == "0 shards"
  assert formatting.plural(2000, "iteration") == "2,000 iterations"
  assert formatting.plural(3, "batch", "batches") == "3 batches"
  message = summary.eta(20_000, 524_288, 524_288, 0.381)
  assert "5h33m" in message and "MFU 38.1% of the bf16 peak" in message  # float32 runs' too


def test_cli_prints_a_row_per_candidate():
  r = run_python("-m", "jaxgpt.plan", "--config=configs/fineweb_40m.py",
                 "--max_iters=6000,20000,6000", "--train_tokens=10000000000",
                 "--tokens_per_sec=524288")
  assert r.returncode == 0, r.stderr
  assert [line.split()[0] for line in r.stdout.splitlines() if line.strip()[:1].isdigit()] == [
      "6,000", "20,000"]  # a candidate given twice, one row
  rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
  assert rows["6,000"][1:] == ["3.15B", "0.31", "77.6", "9.44e+17", "1h40m"]
  assert rows["20,000"][1:] == ["10.49B", "1.05", "258.5", "3.15e+18", "5h33m"]
  assert "warning:" not in r.stdout  # the recipe's warmup (3.5% of the run) follows max_iters
  assert ("verdict: max_iters=20,000, the longest candidate: at 1.05 epochs its repeated tokens "
          "still pay nearly as much as new ones; past Chinchilla's 1,548") in r.stdout


def test_each_candidate_is_planned_as_launch_py_would_train_it():
  """A decay set apart from max_iters stays apart (the run warns of it; so does the plan), a
  tied warmup follows, and a candidate launch.py refuses is said to be one."""
  config = recipe("fineweb_40m")
  config.lr_decay_iters, config.warmup_iters = 5000, 2000
  base = summary.summarize(config, train_tokens=None)
  warnings = iters.table(config, base, [1000, 20000], tokens_per_sec=None).splitlines()
  assert ("warning: max_iters=20,000: lr_decay_iters=5,000 differs from max_iters=20,000: the "
          "last 15,000 iterations run at min_lr=5e-05") in warnings
  assert any(w.startswith("warning: max_iters=1,000: launch.py refuses it: "
                          "config.warmup_iters=2000: must be at most max_iters=1000")
             for w in warnings)
  tied = iters.table(recipe("fineweb_40m"), base, [1000], tokens_per_sec=None)
  assert "warning" not in tied  # warmup 35 of 1,000 iterations, the decay to 1,000


def test_the_verdict_picks_no_candidate_launch_py_refuses_and_shared_warnings_are_said_once():
  """1,000 iterations are the only ones within 4 epochs of the data, but shorter than the
  warmup."""
  r = run_python("-m", "jaxgpt.plan", "--config=configs/fineweb_40m.py",
                 "--max_iters=1000,20000", "--config.warmup_iters=2000",
                 "--config.lr_decay_iters=20000", "--config.out_dir=out/gpt2_124m",
                 "--train_tokens=1000000000")
  assert r.returncode == 0, r.stderr
  warnings = [line for line in r.stdout.splitlines() if line.startswith("warning: ")]
  assert [w for w in warnings if "gpt2_124m" in w and "max_iters=" not in w.split(":")[1]]
  assert len([w for w in warnings if "gpt2_124m" in w]) == 1  # the out_dir's name, said once
  assert any(w.startswith("warning: max_iters=1,000: launch.py refuses it") for w in warnings)
  [verdict] = [line for line in r.stdout.splitlines() if line.startswith("verdict: ")]
  assert verdict.startswith("verdict: max_iters=20,000, ")
  assert verdict.endswith(" (of those launch.py accepts)")


def test_a_measured_throughput_is_scaled_to_the_devices_planned(tmp_path):
  """Said once where it is not scaled (it was '200,000 tok/s: 200,000 measured in ...')."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  rundir.write_config(recipe("fineweb_40m"))  # 524,288 tokens per iteration on one device
  with open(rundir.metrics_path, "w", encoding="utf-8") as f:  # as a run on 2 devices logs
    f.writelines(json.dumps({"event": "train", "iter": it, "tokens": (it + 1) * 2 * 524_288,
                             "tokens_per_sec": 200_000.0}) + "\n" for it in (0, 10, 20))
  records = rundir.read_metrics()["train"]
  assert report.last_layout(records) == (records, 2 * 524_288)
  assert iters.measured_devices(rundir.read_config(), 2 * 524_288) == 2
  plan = lambda devices=8: run_python("-m", "jaxgpt.plan", "--config=configs/fineweb_40m.py",
                                     f"--config.out_dir={rundir.out_dir}", f"--devices={devices}",
                                     "--max_iters=20000", "--train_tokens=100B")
  r = plan()
  assert r.returncode == 0, r.stderr
  assert (f"throughput: 800,000 tok/s: 200,000 measured in {rundir.metrics_path} on 2 "
          "device(s), scaled to --devices=8") in r.stdout
  rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
  assert rows["20,000"][-1] == formatting.duration(20_000 * 8 * 524_288 / 800_000)  # 2h55m
  r = plan(devices=2)
  assert r.returncode == 0, r.stderr
  assert (f"\nthroughput: 200,000 tok/s, measured in {rundir.metrics_path} on 2 device(s)\n"
          in r.stdout)
  os.remove(os.path.join(rundir.out_dir, "config.json"))
  r = plan()
  assert r.returncode == 0, r.stderr
  assert (f"throughput: 200,000 tok/s, measured in {rundir.metrics_path} on an unknown number of "
          "devices: the time is at the measured run's rate, --devices does not scale it"
          ) in r.stdout



@pytest.mark.parametrize("figure", ['"tokens": "1024"', '"tokens_per_sec": "fast"'])
def test_a_measured_figure_that_is_no_number_is_one_error_naming_it(tmp_path, figure):
  """As report says it: a hand-edited metrics.jsonl was a TypeError's traceback."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  rundir.write_config(recipe("quickstart"))
  record = {"event": "train", "iter": 0, "tokens": 1024, "tokens_per_sec": 500.0}
  key, value = figure.split(": ")
  record[json.loads(key)] = json.loads(value)
  with open(rundir.metrics_path, "w", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")
  r = run_python("-m", "jaxgpt.plan", "--config=configs/quickstart.py",
                 f"--config.out_dir={rundir.out_dir}", "--train_tokens=1M")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: {rundir.metrics_path}: the train record of iter 0 has {json.loads(key)}="
      f"{json.loads(value)!r}, not a number")

def test_a_resume_on_more_devices_is_measured_as_it_runs_now(tmp_path):
  """Logs at iterations 0 and 10 on 2 devices; resumed at 20 on 4: the rate is that of the
  logs after the resume's first (which times one step and spans both layouts' tokens), and
  none while that one is the last."""
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  rundir.write_config(recipe("fineweb_40m"))  # 524,288 tokens per iteration on one device
  on_2 = [(it, (it + 1) * 2 * 524_288, 200_000.0) for it in (0, 10)]
  on_4 = [(it, 20 * 2 * 524_288 + (it - 19) * 4 * 524_288, tok_s)
          for it, tok_s in ((20, 1_000.0), (30, 400_000.0), (40, 400_000.0), (50, 200_000.0))]
  with open(rundir.metrics_path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"event": "train", "iter": it, "tokens": tokens,
                             "tokens_per_sec": tok_s}) + "\n" for it, tokens, tok_s in on_2 + on_4)
  records, tokens_per_iter = report.last_layout(rundir.read_metrics()["train"])
  assert [r["iter"] for r in records] == [20, 30, 40, 50] and tokens_per_iter == 4 * 524_288
  r = run_python("-m", "jaxgpt.plan", "--config=configs/fineweb_40m.py",
                 f"--config.out_dir={rundir.out_dir}", "--devices=8", "--max_iters=20000",
                 "--train_tokens=100B")
  assert r.returncode == 0, r.stderr
  assert (f"throughput: 800,000 tok/s: 400,000 measured in {rundir.metrics_path} on 4 "
          "device(s), scaled to --devices=8") in r.stdout  # the median of 30, 40 and 50
  just_resumed = rundir.read_metrics()["train"][:3]
  assert report.last_layout(just_resumed)[0] == []  # nothing measured on 4 devices yet


def test_a_rate_measured_for_another_step_is_not_used(tmp_path):
  from jaxgpt.plan import __main__ as plan_cli
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  config = recipe("fineweb_40m")
  ran = config.copy_and_resolve_references()
  ran.attention = "xla"  # the kernel `auto` ran, as the run saves it
  rundir.write_config(ran)
  with open(rundir.metrics_path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"event": "train", "iter": it, "tokens": (it + 1) * 524_288,
                             "tokens_per_sec": 100_000.0}) + "\n" for it in (0, 10, 20))
  step = {k: config[k] for k in plan_cli._STEP_KEYS}
  assert step["attention"] == "auto"
  assert plan_cli._measured(rundir.out_dir, step, 1, 1e9, None)[0] == 100_000.0
  assert plan_cli._measured(rundir.out_dir, {**step, "attention": "cudnn"}, 1, 1e9,
                            None)[0] is None
  for key, value in (("n_layer", 24), ("batch_size", 32), ("dtype", "float32"),
                     ("sharding", "fsdp")):
    assert config[key] != value
    tok_s, why = plan_cli._measured(rundir.out_dir, {**step, key: value}, 1, 1e9, None)
    assert tok_s is None
    assert why == (f"the run measured in {rundir.metrics_path} ran another step: "
                   f"{key}={config[key]!r} there, {value!r} here")
  device = estimate_flags("H100", mfu=0.5)
  tok_s, source = plan_cli._throughput(device, rundir.out_dir, 0.0, 1e9, 1,
                                       {**step, "n_layer": 24})
  assert tok_s == 989.5e12 * 0.5 / 1e9
  assert source.endswith("not a measurement; the run measured in "
                         f"{rundir.metrics_path} ran another step: n_layer=12 there, 24 here)")


def test_device_s_time_is_not_a_rate_measured_on_another_card(tmp_path):
  """`plan --device=H100` over a run measured on a CPU (MFU unknown) or an RTX 4070 estimates
  for the H100; a run its MFU says ran on an H100's peak is measured there, and used."""
  from jaxgpt.plan import __main__ as plan_cli
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  config = recipe("fineweb_40m")
  rundir.write_config(config)
  step = {k: config[k] for k in plan_cli._STEP_KEYS}
  flops = summary.summarize(config).flops_per_token
  h100 = estimate_flags("H100", mfu=0.4)
  estimate = 989.5e12 * 0.4 / flops

  def plan_over(tok_s: float, peak: float | None) -> tuple[float | None, str]:
    mfu = None if peak is None else summary.mfu(tok_s, flops, peak, 1)
    with open(rundir.metrics_path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"event": "train", "iter": it, "tokens": (it + 1) * 524_288,
                               "tokens_per_sec": tok_s, "mfu": mfu}) + "\n"
                   for it in (0, 10, 20))
    return plan_cli._throughput(h100, rundir.out_dir, 0.0, flops, 1, step)

  tok_s, source = plan_over(10_000.0, None)  # a CPU's run: no peak, no MFU
  assert tok_s == estimate and source.endswith(
      "ran on a device of unknown peak FLOP/s (a CPU, say), not --device's card)")
  tok_s, source = plan_over(60_000.0, gpus.peak_flops("NVIDIA GeForce RTX 4070"))
  assert tok_s == estimate and source.endswith(
      "ran on a card of 58 TFLOP/s peak (from its MFU), not --device's 990)")
  plan_over(10_000.0, 5e14)  # a config's peak_flops, its run's card's, makes no card an H100
  assert plan_cli._throughput(h100, rundir.out_dir, 5e14, flops, 1, step)[1].endswith(
      "ran on a card of 500 TFLOP/s peak (from its MFU), not --device's 990)")
  tok_s, source = plan_over(300_000.0, gpus.peak_flops("NVIDIA H100 PCIe"))  # 24% below
  assert tok_s == estimate and source.endswith(
      "ran on a card of 756 TFLOP/s peak (from its MFU), not --device's 990)")
  assert plan_over(400_000.0, gpus.peak_flops("NVIDIA H100 80GB HBM3"))[0] == 400_000.0
  no_device = estimate_flags("", mfu=0.4)
  assert plan_cli._throughput(no_device, rundir.out_dir, 0.0, flops, 1, step)[0] == 400_000.0
  os.remove(os.path.join(rundir.out_dir, "config.json"))  # its devices cannot be told
  tok_s, source = plan_cli._throughput(h100, rundir.out_dir, 0.0, flops, 1, step)
  assert tok_s == estimate and source.endswith(
      "ran on an unknown number of devices, whose card cannot be told from its MFU)")


def test_the_verdict_weighs_epochs():
  config = recipe("fineweb_40m")  # 524,288 tokens per iteration
  verdict = lambda candidates, train_tokens: iters.verdict(
      summary.summarize(config, train_tokens=train_tokens), candidates)
  within = verdict([6000, 10000, 40000], 3_680_000_000)
  assert within.startswith("verdict: max_iters=10,000, the longest candidate within 4 epochs: at "
                           "1.42 epochs")
  assert verdict([6000, 20000], 4_000_000_000).endswith("only save time")
  assert "at 0.79 epochs every token is new" in verdict([3000, 6000], 4_000_000_000)
  chinchilla = math.ceil(20 * 40_560_000 / 524_288)  # its own candidate is not past it
  assert "past Chinchilla" not in verdict([1000, chinchilla], 4_000_000_000)
  assert verdict([20000, 40000], 1_000_000_000).startswith(
      "verdict: max_iters=20,000, the shortest asked: every one repeats the 1.00B train tokens "
      "more than 4 times (10.5 epochs here)")


def test_a_split_smaller_than_an_iteration_suggests_no_zero():
  base = summary.summarize(recipe("fineweb_40m"), train_tokens=100_000)  # < 524,288 / 4
  candidates, notes = iters.suggestions(base)
  assert candidates == [math.ceil(20 * 40_560_000 / 524_288), 20000]  # Chinchilla, the recipe
  assert "one iteration's 524,288 tokens are more than 4 epochs of the 100.00K train" in notes[-1]
  assert "the shortest asked" in iters.verdict(base, candidates)
  eval_only = recipe("fineweb_40m")
  eval_only.max_iters = 0  # no row of zeros for it
  candidates, _ = iters.suggestions(summary.summarize(eval_only, train_tokens=100_000))
  assert candidates == [math.ceil(20 * 40_560_000 / 524_288)]


def test_a_damaged_meta_json_is_one_error_naming_it(tmp_path):
  (tmp_path / "meta.json").write_text('{"train_tokens": 12')
  with pytest.raises(UserError, match=r"meta.json: not JSON \(.*\); make the dataset again"):
    iters.count_train_tokens(str(tmp_path), 16)


@pytest.mark.slow
def test_cli_suggests_max_iters_and_estimates_time_on_a_named_gpu():
  r = run_python("-m", "jaxgpt.plan", "--config=configs/fineweb_40m.py", "--train_tokens=3.68B",
                 "--device=NVIDIA H100 80GB HBM3", "--config.out_dir=/nonexistent")
  assert r.returncode == 0, r.stderr
  rows = [line.split()[0] for line in r.stdout.splitlines() if line.strip()[:1].isdigit()]
  chinchilla = math.ceil(20 * 40_560_000 / 524_288)  # 1,548
  limit = 4 * 3_680_000_000 // 524_288  # 4 epochs: 28,076
  assert rows == [f"{chinchilla:,}", "20,000", f"{limit:,}"]
  tok_s = 989.5e12 * 0.4 / summary.summarize(recipe("fineweb_40m")).flops_per_token
  assert f"throughput: {tok_s:,.0f} tok/s, estimated for 1 x NVIDIA H100 80GB HBM3 at 40% MFU" \
      in r.stdout
  assert "compute-optimal" in r.stdout and "4.00 epochs of the 3.68B train tokens" in r.stdout


def test_a_rate_measured_on_several_of_device_s_cards_is_used_and_scaled(tmp_path):
  """A run on 2 H100s logs its MFU over both cards' peak: `plan --device=H100 --devices=8`
  reads one H100 back from it and scales its rate (a peak read without dividing by the
  devices, twice the H100's, passed every default test: the rate was dropped for an estimate)."""
  from jaxgpt.plan import __main__ as plan_cli
  rundir = run_dir.RunDir(str(tmp_path / "run"))
  config = recipe("fineweb_40m")  # 524,288 tokens per iteration on one device
  rundir.write_config(config)
  flops = summary.summarize(config).flops_per_token
  mfu = summary.mfu(800_000.0, flops, gpus.peak_flops("NVIDIA H100 80GB HBM3"), 2)
  with open(rundir.metrics_path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"event": "train", "iter": it, "tokens": (it + 1) * 2 * 524_288,
                             "tokens_per_sec": 800_000.0, "mfu": mfu}) + "\n"
                 for it in (0, 10, 20))
  step = {k: config[k] for k in plan_cli._STEP_KEYS}
  tok_s, source = plan_cli._throughput(estimate_flags("H100", mfu=0.4), rundir.out_dir, 0.0,
                                       flops, 8, step)
  assert tok_s == 3_200_000.0, source
  assert source.endswith("on 2 device(s), scaled to --devices=8")


def test_a_device_s_peak_is_the_flag_s_then_the_config_s_then_the_table_s(tmp_path):
  from jaxgpt.plan import __main__ as plan_cli
  out_dir = str(tmp_path / "run")  # no run there to measure
  given = lambda device, peak: estimate_flags(device, peak_flops=peak, mfu=0.5)
  for device, flag, peak in (("Mystery GPU", 0.0, 5e14), ("H100", 0.0, 5e14),
                             ("H100", 2e14, 2e14)):
    tok_s, source = plan_cli._throughput(given(device, flag), out_dir, 5e14, 1e9, 1, {})
    assert tok_s == peak * 0.5 / 1e9 and f"of {peak / 1e12:,.0f} TFLOP/s" in source
  with pytest.raises(UserError, match="'Mystery GPU': its peak FLOP/s is not in the table"):
    plan_cli._throughput(given("Mystery GPU", 0.0), out_dir, 0.0, 1e9, 1, {})


def test_counts_parse_as_people_write_them():
  assert formatting.parse_count("3.68B") == 3_680_000_000
  assert formatting.parse_count("500M") == formatting.parse_count("5e8") == 500_000_000
  assert formatting.parse_count("10_000") == 10_000
  for text in ("lots", "inf"):
    with pytest.raises(ValueError, match="not a count"):
      formatting.parse_count(text)


def test_train_logs_the_plan_its_warnings_and_an_eta(tmp_path, token_dir, caplog):
  config = tiny_config(tmp_path, token_dir, max_iters=4, warmup_iters=2, lr_decay_iters=4,
                       eval_interval=4)
  with caplog.at_level(logging.INFO, logger="absl"):
    train.train(config)
  messages = [r.getMessage() for r in caplog.records]
  assert any(m.startswith("plan: tokens per iteration: 128 ") for m in messages)
  assert any("epochs of 4.98K train tokens" in m for m in messages)
  assert "plan: warmup_iters=2 is 50% of max_iters=4 (more than 10%)" in messages
  assert sum(m.startswith("estimated time to finish:") for m in messages) == 1


def test_without_the_cuda_plugin_the_cpu_estimate_is_labelled_and_the_plugin_named(
    tmp_path, monkeypatch):
  monkeypatch.setattr(targets, "plugin_installed", lambda: False)
  config = tiny_config(tmp_path, "")
  lines = memory.cpu_report(step_of(config), memory_gib=12, device="RTX 4070")
  assert lines[0].startswith("memory: an estimate from the step compiled for this machine's CPU")
  assert f"GiB for micro-batches of {config.batch_size} batch x {config.block_size} block" \
      in lines[0]
  assert "JAX will have 9.00 GiB (75% of 12 GiB): fits by this estimate" in lines[1]
  assert "pip install -e '.[cuda12]'" in lines[-1]


def test_the_cpu_estimate_says_it_counts_no_fsdp_split(tmp_path, monkeypatch):
  """plan --devices=8 --config.sharding=fsdp printed one unsharded device's need as the need."""
  monkeypatch.setattr(targets, "plugin_installed", lambda: True)
  step = step_of(tiny_config(tmp_path, "", sharding="fsdp"))
  assert memory.cpu_report(step, 12, "RTX 4070", n_devices=8)[1] == (
      "memory: on one device, unsharded: fsdp over 8 devices keeps 1/8 of the weights and "
      "AdamW's moments on each, so less")
  assert len(memory.cpu_report(step, 12, "RTX 4070", n_devices=1)) == 2
  # 7 divides no dimension of its matrices: it said 1/7 of them on each device.
  assert memory.cpu_report(step, 12, "RTX 4070", n_devices=7)[1] == (
      "memory: on one device, unsharded: fsdp over 7 devices keeps 100% of the weights and "
      "AdamW's moments whole on each (7 divides none of their dimensions), so no less")


def test_the_cpu_estimate_says_fit_undecided_within_what_it_overstates(tmp_path, monkeypatch):
  """fineweb_40m on an RTX 4070: the CPU estimate said 11.3 GiB, 'does not fit' 9.00, and
  XLA's plan for the card is 6.77."""
  monkeypatch.setattr(targets, "plugin_installed", lambda: True)
  step = step_of(tiny_config(tmp_path, ""))
  need = memory.cpu_estimate(step)["needed"]
  for over, verdict in [(1.5, "less than this estimate, which has been up to 2.3x XLA's plan"),
                        (3.0, "does not fit by this estimate, nor by 43% of it")]:
    lines = memory.cpu_report(step, memory_gib=need / over / 0.75 / 2**30, device="RTX 4070")
    assert verdict in lines[1], lines[1]


def test_a_card_without_a_target_description_gets_the_cpu_estimate_and_why(tmp_path,
                                                                          monkeypatch, capsys):
  """With the CUDA plugin, --device=L40 (gpus.py's name, 48 GiB) has no target of its own:
  the plan says so and estimates on the CPU (it ended in an error after the table)."""
  from jaxgpt.plan import __main__ as plan_cli
  monkeypatch.setattr(targets, "plugin_installed", lambda: True)
  flags = types.SimpleNamespace(device="L40", memory_gib=None)
  plan_cli._print_memory(flags, step_of(tiny_config(tmp_path, "")), n_devices=1)
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("memory: --device='L40': no target description of that card")
  assert lines[0].endswith("; estimated on the CPU instead")
  assert lines[1].startswith("memory: an estimate from the step compiled for this machine's CPU")
  assert "(75% of 48 GiB): fits by this estimate" in lines[2]



def test_a_card_without_a_target_or_a_memory_is_not_said_to_be_estimated(tmp_path, monkeypatch,
                                                                         capsys):
  """--device='RTX 4060 Ti' (sold with 8 or 16 GB) has neither: 'estimated on the CPU instead'
  came with no estimate after it."""
  from jaxgpt.plan import __main__ as plan_cli
  monkeypatch.setattr(targets, "plugin_installed", lambda: True)
  flags = types.SimpleNamespace(device="RTX 4060 Ti", memory_gib=None)
  plan_cli._print_memory(flags, step_of(tiny_config(tmp_path, "")), n_devices=1)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and "estimated" not in lines[0]
  assert lines[0].startswith("memory: --device='RTX 4060 Ti': no target description")
  assert lines[1] == "memory: 'RTX 4060 Ti' does not say its memory; --memory_gib sets its memory"

def test_the_cpu_estimate_is_xlas_plan_for_the_step_training_compiles(tmp_path):
  config = tiny_config(tmp_path, "")
  estimate = memory.cpu_estimate(step_of(config))
  need = train_step.memory_need(train_step.compile_on(step_of(config), sharding.make_mesh()))
  assert estimate["arguments"] == need.arguments
  assert estimate["needed"] == pytest.approx(need.total, rel=0.05)


def test_on_a_card_running_cudnn_attention_the_scores_are_not_counted(tmp_path):
  config = tiny_config(tmp_path, "", dtype="bfloat16", n_head=2, n_embd=32)  # head size 16
  estimate = memory.cpu_estimate(step_of(config))
  T, B, N, L = config.block_size, config.batch_size, config.n_head, config.n_layer
  assert estimate["attention_scores"] >= L * B * N * T * T * 2  # at least bf16 probabilities
  assert estimate["needed_with_flash"] == estimate["needed"] - estimate["attention_scores"]


@pytest.mark.parametrize("device", ["V100", "", "RTX 2080 Max-Q"])
def test_a_card_jaxgpt_does_not_know_is_estimated_with_the_scores(tmp_path, monkeypatch, device):
  """--device=V100 --peak_flops=... --memory_gib=16 (or --memory_gib alone): such a card may
  be older than 8.0, where `auto` runs XLA's attention; the fit was judged without its scores."""
  monkeypatch.setattr(targets, "plugin_installed", lambda: True)  # no plugin note
  step = step_of(tiny_config(tmp_path, "", dtype="bfloat16", n_head=2, n_embd=32))
  estimate = memory.cpu_estimate(step)
  line = memory.cpu_report(step, memory_gib=16, device=device)[0]
  assert f"about {estimate['needed'] / GiB:.1f} GiB for micro-batches" in line
  assert line.endswith(f"{estimate['needed_with_flash'] / GiB:.1f} GiB under cuDNN's, on 8.0+)")


def test_training_with_dropout_keeps_the_scores_even_where_cudnn_attention_runs(tmp_path,
                                                                               monkeypatch):
  monkeypatch.setattr(targets, "plugin_installed", lambda: True)  # no plugin note
  estimate = lambda **overrides: memory.cpu_report(
      step_of(
          tiny_config(tmp_path, "", dtype="bfloat16", n_head=2, n_embd=32, **overrides)),
      memory_gib=12, device="RTX 4070")[0]
  assert "without the T x T attention scores" in estimate()
  assert "attention scores" not in estimate(dropout=0.1)  # spelled out, it keeps them


def test_layouts_to_try_keep_the_tokens_and_put_recomputation_last():
  layouts = train_step.same_tokens_layouts(32, 16)
  assert [(x["batch_size"], x["gradient_accumulation_steps"]) for x in layouts[:6]] == [
      (32, 16), (16, 32), (8, 64), (4, 128), (2, 256), (1, 512)]
  assert [x["remat"] for x in layouts] == ["none"] * 6 + ["dots"] * 6 + ["full"] * 6
  assert [x["batch_size"] for x in train_step.same_tokens_layouts(12, 1)] == [12, 6, 3] * 3


def test_jax_s_share_of_a_gpu_is_read_as_jaxlib_reads_it(monkeypatch):
  """XLA_CLIENT_MEM_FRACTION, or the deprecated XLA_PYTHON_CLIENT_MEM_FRACTION, else 75%."""
  for name in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
    monkeypatch.delenv(name, raising=False)
  assert memory.mem_fraction() == 0.75
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  assert memory.mem_fraction() == 0.9
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION")
  monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "half")
  with pytest.raises(UserError, match="XLA_CLIENT_MEM_FRACTION='half' is not a number"):
    memory.mem_fraction()
  for share in ("2", "-1", "0"):  # were a budget of twice the card, or below nothing
    monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", share)
    with pytest.raises(UserError, match=rf"XLA_CLIENT_MEM_FRACTION={share}: a share of the "):
      memory.mem_fraction()
  monkeypatch.setenv("TF_FORCE_UNIFIED_MEMORY", "1")  # a GPU's memory spills into the host's
  monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "2")
  assert memory.mem_fraction() == 2


@pytest.mark.parametrize("given", [["--mfu=0.3"], ["--mfu=0.3", "--peak_flops=312e12"]])
def test_the_estimate_s_flags_without_a_device_are_refused_not_ignored(given):
  """Without --device there is no estimate: the time was 'unknown' whatever they said."""
  r = run_python("-m", "jaxgpt.plan", "--config=configs/quickstart.py", *given)
  assert r.returncode == 1 and r.stdout == ""
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: {', '.join(g.split('=')[0] for g in given)}: read with --device alone (the "
      "estimate of its time); add --device=CARD, or drop "
      f"{'it' if len(given) == 1 else 'them'}")


@pytest.mark.parametrize("rate", ["--train_tokens=1M", "--tokens_per_sec=1000"])
def test_an_unknown_device_is_said_before_the_table(rate):
  """With the rate given, a mistyped --device was used for nothing and said nothing."""
  r = run_python("-m", "jaxgpt.plan", "--config=configs/quickstart.py", "--device=H10", rate)
  assert r.returncode == 1 and r.stdout == ""
  assert r.stderr.strip().splitlines()[-1] == (
      "error: --device='H10': not a card jaxgpt knows (jaxgpt/gpus.py); for another, give its "
      "--peak_flops and --memory_gib")


# decay_lr=False: no decay or warmup to warn of.
def test_a_constant_learning_rate_is_not_warned_of_its_decay_or_warmup():
  config = recipe("fineweb_40m")
  config.update(decay_lr=False, lr_decay_iters=30_000, warmup_iters=5_000)
  s = summary.summarize(config, train_tokens=10_000_000_000)
  assert summary.check(config, s) == []
  assert summary.schedule(step_of(config).optim, config.max_iters).startswith(
      "learning rate: constant")


def test_a_max_iters_below_the_resume_counts_its_share_of_the_tokens_before_it():
  config = recipe("fineweb_40m")
  config.max_iters = 5_000
  s = summary.summarize(config, start_iter=10_000, start_tokens=10_000 * 262_144)
  assert s.tokens == 5_000 * 262_144


def test_the_cpu_estimate_weighs_jaxs_share_as_the_environment_sets_it(tmp_path, monkeypatch):
  monkeypatch.setattr(targets, "plugin_installed", lambda: True)
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "0.5")
  step = step_of(tiny_config(tmp_path, ""))
  need = memory.cpu_estimate(step)["needed"]
  memory_gib = need / 0.6 / GiB  # fits 75% of it, not 50%
  line = memory.cpu_report(step, memory_gib, "RTX 4070")[1]
  assert f"JAX will have {0.5 * memory_gib:.2f} GiB (50% of" in line
  assert "fits by this estimate" not in line and "it may fit" in line, line


# XLA plans for 80% of the memory a card is described with: the card is described as JAX's
# share / 0.8.
def test_the_card_is_described_so_that_xla_plans_with_jaxs_share(tmp_path, monkeypatch):
  described = []

  def compile_for(step, t, n_devices=1, memory_bytes=None):
    described.append(memory_bytes)
    return types.SimpleNamespace(memory_analysis=lambda: types.SimpleNamespace(
        argument_size_in_bytes=1, output_size_in_bytes=0, alias_size_in_bytes=0,
        temp_size_in_bytes=2))

  monkeypatch.setattr(memory, "compile_for", compile_for)
  monkeypatch.delenv("XLA_CLIENT_MEM_FRACTION", raising=False)
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  t = targets.target("RTX 4070")
  p = memory.gpu_plan(step_of(tiny_config(tmp_path, "")), t)
  assert p.budget == int(0.75 * t.memory_bytes)
  assert described == [memory.AMPLE * t.memory_bytes, int(p.budget / 0.8)]


def fake_compile_for(need_of):
  """memory.compile_for answering XLA's plan as need_of(step) bytes of temporaries."""
  def compile_for(step, t, n_devices=1, memory_bytes=None):
    return types.SimpleNamespace(memory_analysis=lambda: types.SimpleNamespace(
        argument_size_in_bytes=0, output_size_in_bytes=0, alias_size_in_bytes=0,
        temp_size_in_bytes=need_of(step)))
  return compile_for


def test_a_plan_that_fits_only_by_recomputing_says_so_and_names_a_faster_layout(
    tmp_path, monkeypatch):
  budget = 9 * GiB
  squeezed = memory.GpuPlan(budget, train_step.Need(0, 8 * GiB, 8 * GiB), 12 * GiB)
  monkeypatch.setattr(memory, "gpu_plan", lambda *a, **k: squeezed)
  monkeypatch.setattr(memory, "compile_for",
                      fake_compile_for(lambda step: step.batch_size * 3 * GiB))  # 4 -> 12 GiB
  lines = memory.gpu_report(step_of(tiny_config(tmp_path, "")), targets.target("RTX 4070"),
                            progress=lambda line: None)
  assert lines[1] == ("memory: fits only because XLA recomputes activations (12.00 GiB "
                      "without): slower")
  assert lines[2] == ("memory: at the same tokens per iteration, --config.batch_size=2 "
                      "--config.gradient_accumulation_steps=4 fits without recomputing "
                      "(6.00 GiB)")


@pytest.mark.parametrize(("dropout", "kernel"), [(0.0, "cudnn"), (0.1, "spelled-out")])
def test_a_card_plan_names_the_attention_training_computes(tmp_path, monkeypatch, dropout,
                                                           kernel):
  """Dropout makes training spell attention out (no fused kernel takes it): the plan's line
  said cudnn there."""
  fits = memory.GpuPlan(9 * GiB, train_step.Need(0, GiB, GiB), GiB)
  monkeypatch.setattr(memory, "gpu_plan", lambda *a, **k: fits)
  config = tiny_config(tmp_path, "", dtype="bfloat16", dropout=dropout)
  lines = memory.gpu_report(step_of(config), targets.target("RTX 4070"), progress=lambda _: None)
  assert f"(sm_89; {kernel} attention; " in lines[0]


def test_a_devices_estimate_counts_every_device(tmp_path):
  from jaxgpt.plan import __main__ as plan_cli
  given = estimate_flags("H100", mfu=0.5)
  tok_s, source = plan_cli._throughput(given, str(tmp_path / "run"), 0.0, 1e9, 8, {})
  assert tok_s == pytest.approx(989.5e12 * 0.5 * 8 / 1e9)
  assert "estimated for 8 x H100 at 50% MFU" in source


def test_measured_devices_are_a_whole_count_or_unknown():
  ran = {"gradient_accumulation_steps": 16, "batch_size": 32, "block_size": 1024}
  assert iters.measured_devices(ran, 2 * 524_288) == 2
  assert iters.measured_devices(ran, 1.5 * 524_288) is None
  assert iters.measured_devices(ran, 0.5 * 524_288) is None
  for edited in (0, "16", None):  # a config.json edited by hand
    assert iters.measured_devices({**ran, "gradient_accumulation_steps": edited}, 524_288) is None


def test_the_data_limit_candidate_is_four_epochs():
  base = summary.summarize(recipe("fineweb_40m"), train_tokens=3_680_000_000)
  candidates, notes = iters.suggestions(base)
  assert candidates == [math.ceil(20 * 40_560_000 / 524_288), 20_000,
                        4 * 3_680_000_000 // 524_288]
  assert "max_iters=28,076 is 4.00 epochs of the 3.68B train tokens, the most within 4" in notes[-1]
  # Before, a split of a few iterations read "max_iters=1 is 4 epochs" (it is 2.06), beside a
  # verdict that said 2.06.
  _, notes = iters.suggestions(summary.summarize(recipe("fineweb_40m"), train_tokens=254_976))
  assert "max_iters=1 is 2.06 epochs of the 254.98K train tokens, the most within 4" in notes[-1]


# jaxlib's order: XLA_CLIENT_MEM_FRACTION before the deprecated name.
def test_the_new_mem_fraction_name_wins_over_the_deprecated_one(monkeypatch):
  monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "0.5")
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  assert memory.mem_fraction() == 0.5


def test_the_assumed_mfu_and_peak_are_said_as_the_estimate_used_them(tmp_path):
  """--mfu=0.004 estimates at 0.4%, not at a '0% MFU' that no time could come from."""
  from jaxgpt.plan import __main__ as plan_cli
  given = estimate_flags("Mystery GPU", peak_flops=4e11, mfu=0.004)
  tok_s, source = plan_cli._throughput(given, str(tmp_path / "run"), 0.0, 1e9, 1, {})
  assert tok_s == 4e11 * 0.004 / 1e9
  assert "at 0.4% MFU of 0.4 TFLOP/s (an assumption, not a measurement" in source
  given.peak_flops = 1.25e16  # a card of 12,500 TFLOP/s: not '1.25e+04'
  assert "MFU of 12,500 TFLOP/s" in plan_cli._throughput(given, str(tmp_path / "run"), 0.0, 1e9,
                                                         1, {})[1]
