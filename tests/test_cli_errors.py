"""A user's mistake on any command line is one `error:` line and exit 1, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import (
  PYTHONPATH,
  ROOT,
  pattern_tokens,
  run_python,
  tiny_config,
  truncate_state,
  write_config_file,
)

import launch
from jaxgpt.prep import shards

pytestmark = pytest.mark.slow  # a dozen command lines; test_config checks one of them always


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, str]:
  """A finished tiny run, its recipe file, and a directory that is not empty."""
  tmp_path = tmp_path_factory.mktemp("cli")
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  shards.write_shard(str(data_dir / "syn_train_000000.bin"), pattern_tokens(3000, seed=1))
  shards.write_shard(str(data_dir / "syn_val_000000.bin"), pattern_tokens(1000, seed=3))
  launch.run(tiny_config(tmp_path, str(data_dir), max_iters=2, eval_interval=2,
                         vocab_size=50304))  # GPT-2's tokens: sample refuses fewer
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("mine")
  (tmp_path / "broken.py").write_text("def get_config():\n  return undefined_name\n")
  (tmp_path / "typo.py").write_text("from jaxgpt import defaults\n\ndef get_config():\n"
                                    "  c = defaults.get_config()\n  c.max_iters = c.max_iter\n"
                                    "  return c\n")
  return {"out_dir": str(tmp_path / "run"), "tmp": str(tmp_path),
          "recipe": write_config_file(tmp_path, str(data_dir), max_iters=2, eval_interval=2)}


CASES = {
    "misspelled key": (["launch.py", "--config=configs/quickstart.py", "--config.max_iter=10"],
                       'error: --config.max_iter: no such config key. Did you mean "max_iters"'),
    "wrong type": (["launch.py", "--config=configs/quickstart.py", "--config.max_iters=abc"],
                   "error: --config.max_iters=abc: not an integer"),
    "missing recipe": (["launch.py", "--config=configs/nope.py"],
                       "error: --config: the recipe file could not be loaded"),
    "recipe that is a folder": (["launch.py", "--config={tmp}"],
                                "the recipe file could not be loaded: [Errno 21] Is a directory"),
    "recipe that raises": (["launch.py", "--config={tmp}/broken.py"],
                           "broken.py, line 2: NameError: name 'undefined_name' is not defined"),
    "recipe with a key typo": (["launch.py", "--config={tmp}/typo.py"],
                               "typo.py, line 5: AttributeError: "),
    "nanoGPT's device key": (["launch.py", "--config=configs/quickstart.py",
                              "--config.device=cpu"],
                             ("error: --config.device: no such config key; JAX runs on the "
                              "GPUs it finds; JAX_PLATFORMS=cpu runs on the CPU")),
    "nanoGPT's compile flag": (["-m", "jaxgpt.sample", "--out_dir={out_dir}", "--compile=False"],
                               "error: --compile: no such flag; JAX compiles every step"),
    "nanoGPT's positional recipe": (["launch.py", "configs/quickstart.py",
                                     "--config.max_iters=20"],
                                    ("error: configs/quickstart.py: name the recipe as "
                                     "--config=configs/quickstart.py (and its keys as "
                                     "--config.KEY=VALUE)")),
    "invalid value": (["launch.py", "--config=configs/quickstart.py", "--config.dropout=1.5",
                       "--config.out_dir={tmp}/x"], "error: config.dropout=1.5: must be in [0, 1)"),
    "missing data": (["launch.py", "--config=configs/fineweb_40m.py", "--config.data_dir={tmp}/no",
                      "--config.out_dir={tmp}/y"], "error: no token shards in data_dir="),
    "existing run": (["launch.py", "--config={recipe}"], "already holds checkpoints"),
    "sample without checkpoints": (["-m", "jaxgpt.sample", "--out_dir={tmp}/empty"],
                                   "error: {tmp}/empty/checkpoints: no checkpoints"),
    "sample GPT-2 given a run": (["-m", "jaxgpt.sample", "--init_from=gpt2",
                                  "--out_dir={out_dir}"],
                                 "error: --out_dir names the run whose checkpoint --init_from="),
    "evaluate nanoGPT's weights given a run": (["-m", "jaxgpt.evaluate",
                                                "--init_from=nanogpt:{tmp}/ckpt.pt",
                                                "--out_dir={out_dir}", "--task=hellaswag"],
                                               "; a nanoGPT run's out_dir goes after nanogpt:"),
    "sample prompt file": (["-m", "jaxgpt.sample", "--out_dir={out_dir}", "--start=FILE:nope"],
                           "error: --start=FILE:nope: no such file"),
    "export into a full directory": (["-m", "jaxgpt.export", "--out_dir={out_dir}",
                                      "--out={tmp}/full"], "is a directory that is not empty; "),
    "export where nothing can be written": (["-m", "jaxgpt.export", "--out_dir={out_dir}",
                                             "--out={tmp}/full/keep.txt/hf"],
                                            ("error: {tmp}/full/keep.txt/hf: {tmp}/full/keep.txt "
                                             "is a file, not a directory")),
    "report without metrics": (["-m", "jaxgpt.report", "--out_dir={tmp}/empty"],
                               "no such metrics file"),
    "report as a kind of file matplotlib lacks": (["-m", "jaxgpt.report", "--out_dir={out_dir}",
                                                   "--out={tmp}/r.txt"],
                                                  "matplotlib cannot write .txt files"),
    "plan for no devices": (["-m", "jaxgpt.plan", "--config={recipe}", "--devices=0"],
                            "error: --devices=0: 0 is not a positive integer"),
    "evaluate a text that is a directory": (["-m", "jaxgpt.evaluate", "--out_dir={out_dir}",
                                             "--task=text:{tmp}"],
                                            "error: text:{tmp}: Is a directory"),
    "prepare into a file": (["-m", "jaxgpt.prepare", "python_docs", "--out={tmp}/full/keep.txt"],
                            "error: {tmp}/full/keep.txt: a file, not a directory"),
    "evaluate a text not there, before the weights": (["-m", "jaxgpt.evaluate",
                                                      "--out_dir={tmp}/empty",
                                                      "--task=text:{tmp}/missing.txt"],
                                                     "error: text:{tmp}/missing.txt: no such file"),
    "evaluate an unknown task": (["-m", "jaxgpt.evaluate", "--out_dir={out_dir}", "--task=mmlu"],
                                 "error: unknown evaluation task 'mmlu'"),
    "evaluate a nanoGPT file that is not there": (["-m", "jaxgpt.evaluate",
                                                   "--init_from=nanogpt:{tmp}/ckpt.pt",
                                                   "--task=text:{recipe}"],
                                                  "error: nanogpt:{tmp}/ckpt.pt: no such file"),
    "bench a config launch.py refuses": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py",
                                          "--memory", "--config.n_head=3"],
                                         "error: config.n_embd=128: must be divisible by n_head=3"),
    "bench into a folder not there": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py",
                                       "--out={tmp}/no/x.jsonl"],
                                      "error: --out={tmp}/no/x.jsonl: there is no folder"),
    "bench into a folder": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py",
                             "--out={tmp}/full"], "error: --out={tmp}/full: a folder; name a file"),
    "bench recipes into a file": (["-m", "jaxgpt.bench", "--compare_recipes",
                                   "--out={tmp}/full/keep.txt"],
                                  "error: --out={tmp}/full/keep.txt: a file, not a folder"),
    "bench a zero lr scale": (["-m", "jaxgpt.bench", "--compare_recipes", "--lr_scales=1,0",
                               "--out={tmp}/cmp"],
                              "error: --lr_scales=1,0: each must be a positive number"),
    "bench a page named as its log": (["-m", "jaxgpt.bench", "--gpu_report", "--out={tmp}/r.log"],
                                      "error: --out={tmp}/r.log: the page's log takes that name"),
    "bench a GPU report without a GPU": (["-m", "jaxgpt.bench", "--gpu_report",
                                          "--out={tmp}/gpu.md"],
                                         ("error: --gpu_report times both recipes on a GPU, and "
                                          "JAX finds none here: cpu (cpu), 1 device(s)")),
    "launch a process past the processes": (["launch.py", "--config=configs/quickstart.py",
                                             "--coordinator_address=localhost:1",
                                             "--num_processes=2", "--process_id=5"],
                                            ("error: --coordinator_address/--num_processes/"
                                             "--process_id: process_id and num_processes must")),
    "launch processes without process 0's address": (["launch.py",
                                                      "--config=configs/quickstart.py",
                                                      "--num_processes=2", "--process_id=0"],
                                                     "coordinator_address should be defined"),
    "bench recipes on shards not there": (["-m", "jaxgpt.bench", "--compare_recipes",
                                           "--compare_data={tmp}/no/shards", "--out={tmp}/cmp"],
                                          "error: --compare_data={tmp}/no/shards: no such "),
    "bench recipes with a config": (["-m", "jaxgpt.bench", "--compare_recipes",
                                     "--config=configs/quickstart.py"],
                                    "error: --compare_recipes trains recipes of its own"),
    "bench no variants": (["-m", "jaxgpt.bench", "--compare_recipes", "--variants="],
                          "error: --variants is empty"),
    "bench batch sizes": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py", "--decode",
                           "--decode_batch_sizes=a"],
                          "error: --decode_batch_sizes=a: expected whole numbers >= 1"),
    "bench a flag its mode does not read": (["-m", "jaxgpt.bench",
                                             "--config=configs/quickstart.py", "--memory",
                                             "--out={tmp}/m.jsonl", "--iters=3"],
                                            "error: --iters, --out: not read by --memory"),
    "bench cuDNN where there is none": (["-m", "jaxgpt.bench",
                                         "--config=configs/quickstart.py", "--memory",
                                         "--config.attention=cudnn"],
                                        "error: attention=cudnn fails on cpu"),
    "bench an ablation of named variants": (["-m", "jaxgpt.bench", "--compare_recipes",
                                             "--ablation", "--variants=bogus"],
                                            "error: --ablation trains every variant"),
    "bench a compiled peer without the peer": (["-m", "jaxgpt.bench",
                                                "--config=configs/quickstart.py",
                                                "--torch_compile"],
                                               "error: --torch_compile is read with --peer"),
    "bench negative peak": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py",
                             "--peak_flops=-1"], "error: --peak_flops=-1"),
    "bench a recipe's key without the recipe": (["-m", "jaxgpt.bench", "--memory",
                                                 "--config.n_layer=2"],
                                                ("error: --config.n_layer: a key of the recipe "
                                                "that --config=FILE names, and none is named")),
    "launch a recipe's key before the recipe": (["launch.py", "--config.max_iters=2",
                                                 "--config=configs/quickstart.py"],
                                                ("error: Found --config.max_iters=2 in argv "
                                                 "before a value for --config was specified")),
    "bench an empty --out": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py", "--out="],
                             "error: --out=: names no file or folder"),
    "bench nan peak": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py",
                        "--peak_flops=nan"], "error: --peak_flops=nan: must be a finite number"),
    "bench a peak in TFLOP/s": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py",
                                 "--peak_flops=312"], "error: --peak_flops=312.0: is in FLOP/s"),
    "launch a coordinator without a port": (["launch.py", "--config=configs/quickstart.py",
                                             "--coordinator_address=myhost", "--num_processes=2",
                                             "--process_id=0"],
                                            "error: --coordinator_address=myhost: is not "),
    "launch a port past 65535": (["launch.py", "--config=configs/quickstart.py",
                                  "--coordinator_address=localhost:70000", "--num_processes=2",
                                  "--process_id=0"], "with a port from 1 to 65535"),
    "launch an IPv6 address without brackets": (["launch.py", "--config=configs/quickstart.py",
                                                 "--coordinator_address=fe80::1",
                                                 "--num_processes=2", "--process_id=0"],
                                                "error: --coordinator_address=fe80::1: is not "),
    "launch negative processes": (["launch.py", "--config=configs/quickstart.py",
                                   "--num_processes=-3"], "error: --num_processes=-3: -3 is not"),
    "plan a peak in TFLOP/s": (["-m", "jaxgpt.plan", "--config=configs/quickstart.py",
                                "--peak_flops=312"], "error: --peak_flops=312.0: is in FLOP/s"),
}


# Every command: a stray argument, and a required flag left out (or, where none is required,
# a value of the wrong kind).
USAGE = {
    "launch.py": (["launch.py"], "error: --config is required"),
    "launch.py stray": (["launch.py", "--config=configs/quickstart.py", "now"],
                        "error: unexpected argument(s): now"),
    "sample": (["-m", "jaxgpt.sample", "--dtype=float16"],
               "error: --dtype=float16: value should be one of"),
    "sample stray": (["-m", "jaxgpt.sample", "stray"], "error: unexpected argument(s): stray"),
    "sample a misspelled flag": (["-m", "jaxgpt.sample", "--temprature=1"],
                                 "error: --temprature: no such flag; did you mean --temperature?"),
    "launch.py a key as nanoGPT's flag": (["launch.py", "--config=configs/quickstart.py",
                                           "--max_iters=10"],
                                          "a config key is set as --config.max_iters"),
    "launch.py a misspelled key as a flag": (
        ["launch.py", "--config=configs/quickstart.py", "--max_iterz=10"],
        "error: --max_iterz: no such flag; did you mean --config.max_iters?"),
    "sample none": (["-m", "jaxgpt.sample", "--num_samples=0"],  # said before any weights load
                    "error: --num_samples=0: 0 is not a positive integer"),
    "sample no batch": (["-m", "jaxgpt.sample", "--batch_rows=0"],
                        "error: --batch_rows=0: 0 is not a positive integer"),
    "sample top_p": (["-m", "jaxgpt.sample", "--top_p=0"],  # also before any weights load
                     "error: top_p=0.0: must be in (0, 1] (1 keeps every token)"),
    "evaluate": (["-m", "jaxgpt.evaluate", "--limit=all"], "error: --limit=all: not an integer"),
    "evaluate negative": (["-m", "jaxgpt.evaluate", "--batch_rows=-4"],
                          "error: --batch_rows=-4: -4 is not an integer in the range [0, 65536]"),
    "evaluate a negative stride": (["-m", "jaxgpt.evaluate", "--task=hellaswag", "--stride=-5"],
                                   "error: --stride=-5: -5 is not a non-negative integer"),
    "evaluate a stride for no text": (["-m", "jaxgpt.evaluate", "--task=hellaswag", "--stride=64"],
                                      ("error: --stride is for --task=text:FILE, which "
                                       "--task='hellaswag' does not name")),
    "evaluate too many rows": (["-m", "jaxgpt.evaluate", "--batch_rows=100000000000"],
                               "error: --batch_rows=100000000000: 100000000000 is not an integer"),
    "evaluate no task": (["-m", "jaxgpt.evaluate", "--task="],
                         "error: --task='': name a task: hellaswag, text:FILE"),
    "evaluate stray": (["-m", "jaxgpt.evaluate", "a", "b"], "error: unexpected argument(s): a b"),
    "evaluate a mistyped out_dir": (["-m", "jaxgpt.evaluate", "--out_dir={tmp}/rnu"],  # before
                                    "error: {tmp}/rnu/checkpoints: no checkpoints"),  # a download
    "evaluate unknown weights": (["-m", "jaxgpt.evaluate", "--init_from=gpt2-small"],  # before
                                 "error: --init_from=gpt2-small: must be 'resume'"),  # a download
    "evaluate a nanoGPT file not there": (["-m", "jaxgpt.evaluate",  # before a download
                                           "--init_from=nanogpt:{tmp}/nope.pt"],
                                          "error: nanogpt:{tmp}/nope.pt: no such file"),
    "evaluate GPT-2 at a step": (["-m", "jaxgpt.evaluate", "--init_from=gpt2",  # before a
                                  "--step=3"],  # download
                                 "error: --step picks a checkpoint of --out_dir"),
    "evaluate GPT-2 from a folder not there": (["-m", "jaxgpt.evaluate", "--init_from=gpt2",
                                                "--hf_checkpoint_dir={tmp}/nohf"],  # before a
                                               ("error: hf_checkpoint_dir='{tmp}/nohf' is not "
                                                "a directory")),  # download
    "export": (["-m", "jaxgpt.export"], "error: --out is required"),
    "export empty": (["-m", "jaxgpt.export", "--out="], "error: --out=: names no file or folder"),
    "export stray": (["-m", "jaxgpt.export", "--out=x", "y"], "error: unexpected argument(s): y"),
    "report": (["-m", "jaxgpt.report"], "error: --out_dir is required"),
    "report stray": (["-m", "jaxgpt.report", "--out_dir=x", "y"],
                     "error: unexpected argument(s): y"),
    # An empty path flag was the working directory (report read and wrote report.png there) or
    # not given at all (report's --out: the run's report.png written over).
    "report an empty out_dir": (["-m", "jaxgpt.report", "--out_dir="],
                                "error: --out_dir=: names no file or folder"),
    "report an empty out": (["-m", "jaxgpt.report", "--out_dir={out_dir}", "--out="],
                            "error: --out=: names no file or folder"),
    "sample an empty out_dir": (["-m", "jaxgpt.sample", "--out_dir= "],
                                "error: --out_dir= : names no file or folder"),
    "plan": (["-m", "jaxgpt.plan"], "error: --config is required"),
    "plan stray": (["-m", "jaxgpt.plan", "--config=configs/quickstart.py", "y"],
                   "error: unexpected argument(s): y"),
    "plan a config launch.py refuses": (["-m", "jaxgpt.plan", "--config=configs/quickstart.py",
                                         "--train_tokens=1M", "--config.n_head=5"],
                                        "error: config.n_embd=128: must be divisible by n_head=5"),
    "plan no throughput": (["-m", "jaxgpt.plan", "--config=configs/quickstart.py",
                            "--tokens_per_sec=0"], "error: --tokens_per_sec=0.0: must be above 0"),
    "plan nan throughput": (["-m", "jaxgpt.plan", "--config=configs/quickstart.py",
                             "--tokens_per_sec=nan"],
                            "error: --tokens_per_sec=nan: must be a finite number"),
    "plan a word for max_iters": (["-m", "jaxgpt.plan", "--config=configs/quickstart.py",
                                   "--max_iters=abc"],
                                  "error: --max_iters=abc: candidates are whole numbers > 0"),
    "plan inf tokens": (["-m", "jaxgpt.plan", "--config=configs/quickstart.py",
                         "--train_tokens=inf"], "error: --train_tokens: 'inf' is not a count"),
    "prepare": (["-m", "jaxgpt.prepare", "files"], "error: --out is required"),
    "prepare nothing": (["-m", "jaxgpt.prepare"], "error: name one of fineweb, files, python_docs"),
    "prepare only flags": (["-m", "jaxgpt.prepare", "--workers=2"],
                           "error: name one of fineweb, files, python_docs"),
    "prepare stray": (["-m", "jaxgpt.prepare", "--out={tmp}/p", "books"],
                      "error: name one of fineweb, files, python_docs (got: books)"),
    "prepare a source it lacks, before its flags": (["-m", "jaxgpt.prepare", "openwebtext"],
                                                     ("error: name one of fineweb, files, "
                                                      "python_docs (got: openwebtext)")),
    "prepare a word after its subcommand": (["-m", "jaxgpt.prepare", "files", "--out={tmp}/p",
                                             "a.txt", "b.txt"],
                                            "error: unexpected argument(s): a.txt b.txt"),
    "bench": (["-m", "jaxgpt.bench"], "error: --config is required"),
    "bench stray": (["-m", "jaxgpt.bench", "--config=configs/quickstart.py", "y"],
                    "error: unexpected argument(s): y"),
}
CASES.update(USAGE)


@pytest.mark.parametrize("case", CASES)
def test_a_user_mistake_is_one_line_without_a_traceback(trained, case):
  args, expected = CASES[case]
  r = run_python(*(a.format(**trained) for a in args))
  assert r.returncode == 1, r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and expected.format(**trained) in errors[0], r.stderr[-2000:]


@pytest.mark.parametrize("command", ["launch.py", "jaxgpt.sample", "jaxgpt.evaluate",
                                     "jaxgpt.export", "jaxgpt.report", "jaxgpt.plan",
                                     "jaxgpt.prepare", "jaxgpt.bench"])
def test_help_is_the_command_and_its_own_flags_and_exits_0(command):
  r = run_python(*([command] if command.endswith(".py") else ["-m", command]), "--help")
  assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
  flags_part = r.stdout.split("\nflags:\n")[1]
  assert flags_part.startswith("  --") and "  --helpfull:" in flags_part
  assert "\n/" not in r.stdout and ".;" not in r.stdout  # absl's path headings, multi-flag notes


def test_a_traceback_on_request(trained):
  r = run_python("-m", "jaxgpt.sample", f"--out_dir={trained['tmp']}/empty",
                 JAXGPT_TRACEBACK="1")
  assert r.returncode == 1 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_library_chatter_stays_out_of_the_default_log(trained):
  sample = ["-m", "jaxgpt.sample", f"--out_dir={trained['out_dir']}", "--num_samples=1",
            "--max_new_tokens=2", "--start=A"]
  r = run_python(*sample)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Unable to initialize backend" not in r.stderr and "orbax" not in r.stderr.lower()
  loud = run_python(*sample, "--verbosity=1")
  assert "checkpoint_manager.py" in loud.stderr  # everything, with absl's prefix, on request


def test_a_torn_checkpoint_is_one_line_without_orbax_s_leftovers(trained, tmp_path):
  """Orbax's error names only the array it read; the storage error below it says what went
  wrong. Nothing else is printed (the pages of Orbax's unfinished reads, which timing leaves
  on some runs, are dropped: test_checkpoint checks that)."""
  run = tmp_path / "run"
  shutil.copytree(trained["out_dir"], run)
  # Every byte of the arrays' data: which half of a file holds the params is the save's timing.
  truncate_state(str(run / "checkpoints" / "2"), files="ocdbt.process_*/d/*", keep=0)
  r = run_python("-m", "jaxgpt.sample", f"--out_dir={run}", "--step=2", "--num_samples=1",
                 "--max_new_tokens=2")
  assert r.returncode == 1
  assert r.stderr.splitlines() == [
      f"error: {run}/checkpoints/2 is unreadable (a file of it is truncated or corrupt)"]


def test_samples_piped_into_head_end_without_a_traceback(trained):
  """`sample | head` closes the pipe under a writer with more to say: exit as SIGPIPE would."""
  sample = (f"{sys.executable} -m jaxgpt.sample --out_dir={trained['out_dir']} "
            "--num_samples=1000 --max_new_tokens=50")  # a batch (~8 KB) fits the pipe; 31 follow
  r = subprocess.run(["bash", "-c", f"set -o pipefail; {sample} | head -c 10 > /dev/null"],
                     cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH),
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 141 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert not any(line.startswith(("error:", "Exception")) for line in r.stderr.splitlines())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="writes to /dev/full")
def test_output_onto_a_full_disk_is_one_line(trained):
  """A full disk under stdout (or any output) is no bug: one line, no traceback."""
  report = f"{sys.executable} -m jaxgpt.report --out_dir={trained['out_dir']}"
  r = subprocess.run(["bash", "-c", f"{report} > /dev/full"], cwd=ROOT,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH),
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 1 and r.stderr.splitlines() == [
      "error: writing the output failed (No space left on device)"], r.stderr[-2000:]


def test_a_coordinator_address_is_host_and_port_as_jax_splits_it():
  """JAX splits at the last ':' and ends in a traceback, or aborts the process for a port past
  65535; an IPv6 host goes in brackets."""
  valid = ("", "node1:1234", "10.0.0.1:65535", "[::1]:1234")
  invalid = ("myhost", "::1", "fe80::1", "h:65536", "h:70000", "h:0", "h:\u00b2", ":1234", "h:")
  assert all(launch._is_host_and_port(a) for a in valid)
  assert not any(launch._is_host_and_port(a) for a in invalid)
