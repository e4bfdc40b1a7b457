"""Config overrides from the command line, and the errors that name a bad key."""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess

import ml_collections
import numpy as np
import pytest
from absl import flags
from conftest import recipe, records, run_python, write_config_file
from ml_collections import config_flags

import launch as launch_py  # launch() below runs launch.py as a command
from jaxgpt import cli, data, defaults, optim
from jaxgpt.errors import UserError


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
  return run_python("launch.py", *args, **env)


# launch.py's main under cli.run, as its __main__ runs it, for each command line given (flags
# after --config=configs/quickstart.py) in one Python, `run` stubbed to say absl's verbosity: the
# verbosity a run would log at, and the line or code each exits with.
LAUNCH_MAIN = """
import json, sys
from absl import logging
import launch
from jaxgpt import cli
launch._define_flags()
launch.run = lambda config, config_file: print(json.dumps([line, logging.get_verbosity()]))
for line in sys.argv[1:]:
  sys.argv = ["launch.py", "--config=configs/quickstart.py", *line.split()]
  try:
    cli.run(launch.main)
  except SystemExit as e:
    print(json.dumps([line, e.code]))
"""
NEAR_KEY, FAR_KEY, NO_VERBOSITY = "--config.max_iterz=10", "--config.zzzzzz=10", ""


@pytest.fixture(scope="module")
def launch_main() -> dict[str, list]:
  """What each command line of LAUNCH_MAIN's said, by its flags: one Python for them all (each
  launch.py imports JAX)."""
  r = run_python("-c", LAUNCH_MAIN, NEAR_KEY, FAR_KEY, NO_VERBOSITY)
  assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
  said = collections.defaultdict(list)
  for line, value in map(json.loads, r.stdout.splitlines()):
    said[line].append(value)
  return said


def test_unknown_key_is_an_error_naming_it(launch_main):
  assert launch_main[NEAR_KEY] == [(
      'error: --config.max_iterz: no such config key. Did you mean "max_iters" instead of '
      '"max_iterz"?')]
  assert launch_main[FAR_KEY] == ["error: --config.zzzzzz: no such config key."]  # none close


def test_launch_logs_its_progress_without_a_verbosity_flag(launch_main):
  """At warnings alone (absl's logging default) a run would print no plan and no iteration."""
  assert launch_main[NO_VERBOSITY] == [0, 0]  # run at absl's INFO, then exit 0


def test_nanogpts_compile_key_says_jax_compiles_anyway():
  r = launch("--config=configs/quickstart.py", "--config.compile=False")
  assert r.returncode == 1 and r.stderr.strip() == (
      "error: --config.compile: no such config key; JAX compiles every step (jax.jit) without "
      "one; leave it out")


def test_a_recipe_under_home_is_read_as_every_path_is(tmp_path):
  """A shell leaves `--config=~/cfg.py` as it is (no variable precedes the `=`)."""
  (tmp_path / "cfg.py").write_text("from jaxgpt import defaults\n\ndef get_config():\n"
                                   "  return defaults.get_config()\n")
  r = launch("--config=~/cfg.py", "--config.zzzzzz=10", HOME=str(tmp_path))
  assert r.returncode == 1 and r.stderr.strip() == "error: --config.zzzzzz: no such config key."


def test_help_lists_every_config_key_with_its_default_and_exits_0():
  r = launch("--help")
  assert r.returncode == 0 and r.stderr == ""
  for key, value in defaults.get_config().items():
    assert f"\n  {key}={value!r}" in r.stdout
  assert "\n  max_iters=600000: total number of training iterations\n" in r.stdout
  assert "\n  --config: Run recipe" in r.stdout and "(required)" in r.stdout
  assert "\n/" not in r.stdout  # no section headed by a file's path


def test_help_beside_a_recipe_lists_the_recipe_s_values(tmp_path):
  """A recipe's --help listed the schema's defaults (max_iters=600000 for a 6-iteration run)."""
  recipe_file = write_config_file(tmp_path, str(tmp_path / "data"), max_iters=7)
  r = launch(f"--config={recipe_file}", "--config.eval_interval=2", "--help")
  assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
  assert "\n  max_iters=7: total number of training iterations\n" in r.stdout
  # A path longer than the line stays whole (textwrap broke it, with pytest-xdist's tmp_path).
  assert f" out_dir='{tmp_path / 'run'}': run directory" in " ".join(r.stdout.split())
  assert "\n  eval_interval=2: " in r.stdout and "\n  lr_decay_iters=6: " in r.stdout
  r = launch(f"--config={tmp_path / 'not_here.py'}", "--help")
  assert r.returncode == 1 and r.stderr.startswith("error: --config: the recipe file could not")
  five = tmp_path / "five.py"
  five.write_text("def get_config():\n  return 5\n")
  r = launch(f"--config={five}", "--help")  # an AttributeError's traceback
  assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
  assert cli._recipe_paths(["launch.py", "--config"]) == set()  # `--config --help`: the help


@pytest.mark.parametrize("overrides", [(), ("--config.max_iters=3",)])
def test_a_second_recipe_is_an_error(overrides):
  """The second --config won without a word, or absl said a flag 'is defined twice'."""
  r = launch("--config=configs/quickstart.py", "--config=configs/fineweb_40m.py", *overrides)
  assert r.returncode == 1 and r.stderr == (
      "error: --config: given twice; a run reads one recipe (--config.KEY=VALUE sets its keys)\n")


def test_wrong_type_is_an_error_naming_the_key():
  r = launch("--config=configs/quickstart.py", "--config.max_iters=lots")
  assert r.returncode == 1 and r.stderr == "error: --config.max_iters=lots: not an integer\n"


def test_invalid_value_is_an_error_naming_the_key(tmp_path):
  r = launch("--config=configs/quickstart.py", "--config.n_head=3",
             f"--config.out_dir={tmp_path}")
  assert r.returncode == 1
  assert r.stderr == "error: config.n_embd=128: must be divisible by n_head=3\n"


def test_missing_data_says_how_to_make_it(tmp_path):
  r = launch("--config=configs/fineweb_40m.py", f"--config.data_dir={tmp_path / 'none'}",
             f"--config.out_dir={tmp_path / 'run'}")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert r.stderr.splitlines()[:2] == [
      (f"error: no token shards in data_dir='{tmp_path / 'none'}' for dataset='fineweb'. Make "
       "them with:"), f"  python -m jaxgpt.prepare fineweb --out={tmp_path / 'none'}"]


@pytest.mark.parametrize("vocabulary", [
    ["--config.vocab_size=96"],  # the recipe's
    ["--config.init_from=gpt2", "--config.hf_checkpoint_dir={tmp}/hf"],  # the starting weights'
])
def test_a_closing_sample_the_model_cannot_write_is_refused_before_data_prep(tmp_path,
                                                                             vocabulary):
  """A vocabulary of 96 ids, the recipe's or the starting weights' (read from their
  config.json, no tensor): refused before the data is made or the weights load."""
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(json.dumps({
      "model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024,
      "vocab_size": 96}))
  r = launch("--config=configs/quickstart.py", *(a.format(tmp=tmp_path) for a in vocabulary),
             "--config.max_iters=1",
             f"--config.data_dir={tmp_path / 'python_docs'}",
             f"--config.out_dir={tmp_path / 'run'}")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
      "error: config.sample_tokens=60: the model's vocab_size=96 cannot hold GPT-2's 50257 "
      "tokens, which the closing sample is written in: it was trained on other tokens (a "
      "character-level nanoGPT run, say); set --config.sample_tokens=0")
  assert not (tmp_path / "run").exists() and not (tmp_path / "python_docs").exists()  # no prep


def test_eval_tasks_the_model_cannot_read_are_refused_before_their_files(tmp_path):
  """A character-level model's HellaSwag: refused before its file is downloaded."""
  r = launch("--config=configs/quickstart.py", "--config.vocab_size=96",
             "--config.sample_tokens=0", "--config.eval_tasks=hellaswag",
             f"--config.hellaswag_file={tmp_path / 'not_here.jsonl'}",
             f"--config.out_dir={tmp_path / 'run'}")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
      "error: the model's vocab_size=96 cannot hold GPT-2's 50257 tokens, which every task's "
      "text is written in: it was trained on other tokens (a character-level nanoGPT run, say)")


def test_a_closing_sample_too_long_to_write_is_refused_before_data_prep(tmp_path):
  r = launch("--config=configs/quickstart.py", "--config.sample_tokens=3000000000",
             "--config.max_iters=1",
             f"--config.data_dir={tmp_path / 'python_docs'}", f"--config.out_dir={tmp_path / 'run'}")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
      "error: config.sample_tokens=3000000000: max_new_tokens=3000000000: must be in "
      "[1, 1,000,000]; set --config.sample_tokens=0")
  assert not (tmp_path / "run").exists() and not (tmp_path / "python_docs").exists()  # no prep


def test_intervals_that_follow_another_key_do_not_move_it():
  """eval_tasks_interval and lr_decay_iters follow eval_interval and max_iters until set;
  setting them leaves the key they followed as it was."""
  config = recipe("gpt2_124m")
  config.eval_interval, config.max_iters = 250, 8000
  assert (config.eval_tasks_interval, config.lr_decay_iters) == (250, 8000)
  config.eval_tasks_interval, config.lr_decay_iters = 2000, 6000
  assert (config.eval_interval, config.max_iters) == (250, 8000)


@pytest.mark.parametrize("name", ["quickstart", "fineweb_40m", "fineweb_40m_modern",
                                  "gpt2_124m", "gpt2_124m_modern"])
def test_a_recipe_reads_the_data_of_the_dataset_it_is_given(name):
  """--config.dataset=python_docs on a FineWeb recipe reads (and makes) data/python_docs,
  never the FineWeb directory."""
  config = recipe(name)
  config.dataset = "python_docs"
  assert data.resolve_data_dir(config.dataset, config.data_dir) == "data/python_docs"


@pytest.mark.parametrize("key,value,message", [
    ("dtype", "float64", "must be one of"),
    ("attention", "flash", "must be one of"),
    ("remat", "block", "must be one of"),
    ("loss_chunk_size", -1, "must be >= 0"),
    ("lr_decay_iters", 10, "must be greater than warmup_iters"),
    ("min_lr", 1.0, "must be in [0, learning_rate"),
    ("dropout", 1.0, "must be in [0, 1)"),
    ("beta1", 1.5, "must be in [0, 1)"),
    ("beta2", 1.0, "must be in [0, 1)"),
    ("weight_decay", -0.1, "must be >= 0"),
    ("peak_flops", -1.0, "is in FLOP/s: at least 1e+09"),
    ("peak_flops", 312.0, "is in FLOP/s: at least 1e+09"),  # TFLOP/s: MFU 5,300,378,388%
    ("peak_flops", float("inf"), "is in FLOP/s: at least 1e+09"),
    ("learning_rate", float("inf"), "must be finite"),  # the loss was NaN at iteration 0
    ("learning_rate", float("nan"), "must be finite"),  # was "must be >= 0"
    ("weight_decay", float("nan"), "must be finite"),
    ("logit_softcap", float("inf"), "must be finite"),
    # Values a float64 check passes and the float32 step cannot hold: the update would be 0
    # (beta2) or non-finite (beta1, learning_rate) while the loss and gradient stay finite.
    ("beta2", 0.99999999, "must be below 1 as a float32"),
    ("beta1", 0.99999999, "must be below 1 as a float32"),
    ("learning_rate", 1e39, "must be finite as a float32"),
    ("seed", 2**32 + 5, "a PRNG key holds 32 bits"),  # it would alias seed 5
    ("out_dir", "", "names no directory"),  # was "error: : a run cannot write there"
    ("dataset", "", "names no dataset"),  # was a hint to prepare --out=data/
    # An OverflowError in the step, after data prep, passing the schedule's lengths in int32:
    ("max_iters", 3_000_000_000, "must be below 2**31"),
    ("max_iters", 10**400, "must be finite as a float32"),  # was an OverflowError
    ("muon_momentum_warmup_iters", 3_000_000_000, "must be below 2**31"),
    ("logit_softcap", 1e-50, "must be 0 (no soft-cap) or in [1, 10000]"),  # 0 in float32: NaN
    ("logit_softcap", 0.5, "must be 0 (no soft-cap) or in [1, 10000]"),  # trained at grad norm 0
    ("logit_softcap", 1e38, "must be 0 (no soft-cap) or in [1, 10000]"),  # logits / cap: all 0
    ("data_workers", 200, "must be in [0, 64]: processes of their own"),  # ~50 GB of workers
    ("sample_tokens", -5, "must be >= 0"),  # was no sample, silently
    ("data_prefetch", 0, "must be in [1, 64]"),
    ("data_prefetch", 20000, "must be in [1, 64]: batches read ahead"),  # 20 GB at 124M
    ("hf_checkpoint_dir", "gpt2_dir", "init_from='scratch' would not read it"),  # it didn't
    ("hellaswag_file", "hs.jsonl", "is for the hellaswag task, which eval_tasks=''"),  # unread
    ("keep_checkpoints", 0, "must be >= 1"),
    ("skip_nonfinite", -1, "must be >= 0"),  # a healthy run stopped at its first log
])
def test_validate_names_the_key(key, value, message):
  c = defaults.get_config()
  c.warmup_iters = 100
  c[key] = value
  with pytest.raises(UserError, match=f"config.{key}=") as e:
    defaults.validate(c)
  assert message in str(e.value)


NUMBER_KEYS = [key for key, default in defaults.get_config().items()
               if type(default) in (int, float)]


@pytest.mark.parametrize("key,value", [(key, 0) for key in defaults.POSITIVE_KEYS]
                         + [(key, -1) for key in NUMBER_KEYS])
def test_a_count_below_its_least_is_one_line_naming_the_key(key, value):
  """Each positive key at 0, and every number key of the schema at -1 (Muon's and wsd's where
  they are read), is refused at the start, before the data and the compile: s45 found
  eval_interval=0 passed under `>= 0` and failed at `it % 0` in the first iteration."""
  assert set(defaults.POSITIVE_KEYS) >= {  # said here too: a key moved to the non-negative
      "n_layer", "n_head", "n_embd", "block_size", "batch_size",  # ones would lose its 0 case
      "gradient_accumulation_steps", "vocab_size", "eval_interval", "log_interval", "eval_iters",
      "eval_tasks_interval"}
  c = defaults.get_config()
  c.update(warmup_iters=100, optimizer="muon", lr_schedule="wsd")
  c[key] = type(c[key])(value)
  with pytest.raises(UserError) as e:
    defaults.validate(c)
  assert str(e.value).startswith(f"config.{key}={c[key]!r}: ") and "\n" not in str(e.value)


def test_a_recipe_not_made_from_the_defaults_is_refused_naming_what_it_lacks():
  partial = ml_collections.ConfigDict({"n_layer": 2, "n_head": 2})
  with pytest.raises(UserError, match=r"the config has no always_save_checkpoint, attention, "
                                      r"auto_prepare, auto_resume, \.\.\.: a recipe's "
                                      r"get_config\(\) starts from jaxgpt.defaults.get_config"):
    defaults.validate(partial)


def test_type_is_checked_on_assignment_and_what_ml_collections_lets_through_by_validate():
  c = defaults.get_config()
  with pytest.raises(TypeError):
    c.max_iters = "lots"
  for key, value, kind in (("grad_clip", None, "a number"), ("decay_lr", None, "True or False"),
                           ("out_dir", None, "a string"), ("seed", True, "an integer")):
    c = defaults.get_config()
    c[key] = value  # `c.grad_clip = None` in a recipe: "no clipping", as in PyTorch
    with pytest.raises(UserError, match=rf"^config.{key}={value}: must be {kind}$"):
      defaults.validate(c)
  c = defaults.get_config()
  c.learning_rate = 1  # an int where a float goes is a number
  c.beta2 = np.float64(0.95)  # and numpy's numbers are numbers
  defaults.validate(c)


@pytest.mark.parametrize("name", ["quickstart", "fineweb_40m", "gpt2_124m"])
def test_overriding_max_iters_alone_carries_the_schedule(name):
  config = recipe(name)
  warmup_share = config.warmup_iters / config.max_iters
  config.max_iters = 400  # what --config.max_iters=400 does
  assert config.lr_decay_iters == 400
  assert config.warmup_iters == pytest.approx(warmup_share * 400, abs=1)
  defaults.validate(config)
  config.warmup_iters = 50  # set on its own, a key stops following max_iters
  config.max_iters = 800
  assert (config.warmup_iters, config.lr_decay_iters) == (50, 800)


@pytest.mark.parametrize("name", ["fineweb_40m_modern", "gpt2_124m_modern"])
def test_a_modern_recipe_s_min_lr_follows_its_learning_rate(name):
  """A tenth of it, as the recipe sets it; it was fixed when the recipe loaded, so a sweep's
  higher rate decayed to the recipe's floor, and a lower one was refused for min_lr."""
  config = recipe(name)
  assert config.min_lr == config.learning_rate / 10
  config.learning_rate = 1e-4
  defaults.validate(config)
  assert config.min_lr == pytest.approx(1e-5)
  config.min_lr = 0.0  # set on its own, it stays
  config.learning_rate = 1e-3
  assert config.min_lr == 0.0


def test_a_warmup_as_long_as_the_run_names_warmup_iters():
  """lr_decay_iters follows max_iters: the error named it, a key the user had not set."""
  config = recipe("quickstart")
  config.update(max_iters=2, warmup_iters=2)
  with pytest.raises(UserError, match=r"^config.warmup_iters=2: must be below max_iters=2"):
    defaults.validate(config)


def test_a_non_finite_rate_is_not_called_a_float32_overflow():
  c = defaults.get_config()
  c.learning_rate = float("nan")
  with pytest.raises(UserError, match=r"^config.learning_rate=nan: must be finite$"):
    defaults.validate(c)


def test_a_schedule_that_cannot_work_is_an_error():
  config = defaults.get_config()
  config.max_iters = 1000  # nanoGPT's warmup_iters=2000 would outlast the run
  with pytest.raises(UserError, match="config.warmup_iters=2000: must be at most "
                                      "max_iters=1000"):
    defaults.validate(config)


def test_an_eval_only_config_of_max_iters_zero_is_valid_whatever_the_schedule():
  """eval_only with max_iters=0 trains nothing, so the schedule's keys have nothing to check."""
  config = defaults.get_config()
  config.update(eval_only=True, max_iters=0)  # lr_decay_iters follows it to 0, below warmup
  defaults.validate(config)


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections'
def test_a_cut_down_recipe_run_leaves_warmup(tmp_path, token_dir, caplog):
  """The recipe's warmup follows max_iters; its command line read as launch.py's, then run in
  this process (a launch.py process imported JAX and compiled for itself)."""
  path = os.path.join(defaults.CHECKOUT, "configs", "fineweb_40m.py")
  argv = ["launch.py", f"--config={path}", "--config.max_iters=40",
          f"--config.data_dir={token_dir}", f"--config.out_dir={tmp_path / 'run'}",
          "--config.vocab_size=96", "--config.n_layer=1", "--config.n_head=1",
          "--config.n_embd=16", "--config.block_size=16", "--config.batch_size=2",
          "--config.gradient_accumulation_steps=1", "--config.dtype=float32",
          "--config.eval_iters=1", "--config.eval_interval=40", "--config.log_interval=1"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "a recipe", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  caplog.set_level(logging.INFO)
  launch_py.run(values.config, path)
  assert ("learning rate: warmup over 1 iteration to 0.0005, cosine to 5e-05 at iteration 40 "
          "(max_iters=40)") in caplog.text
  assert f"python -m jaxgpt.report --out_dir={tmp_path / 'run'}" in caplog.text  # what's next
  train = records(str(tmp_path / "run"), "train")
  lrs = [rec["lr"] for rec in train]
  assert lrs[1] == pytest.approx(5e-4, rel=1e-3) and lrs[-1] < 1e-4  # warmed up, then decayed
  config = recipe("fineweb_40m")
  config.max_iters = 40
  schedule = optim.lr_schedule(defaults.view(optim.OptimConfig, config), np)
  assert lrs == [pytest.approx(float(schedule(rec["iter"])), rel=1e-6) for rec in train]


def test_a_recipe_key_that_is_not_in_the_schema_is_refused_naming_it():
  c = defaults.get_config()
  c.max_iter = 10  # a typo in a recipe file: max_iters stays 600000
  with pytest.raises(UserError, match=r'config.max_iter: no such config key \(did you mean '
                                      r'"max_iters"\?\)'):
    defaults.validate(c)


@pytest.mark.parametrize("returned", [5, ["max_iters"]])
def test_a_recipe_that_returns_no_config_dict_is_one_error(returned):
  with pytest.raises(UserError, match=r"get_config\(\) returned (int|list), not a ConfigDict"):
    defaults.validate(returned)


@pytest.mark.slow  # a command line
@pytest.mark.parametrize("returned", ["5", "{'max_iters': 3}"])
def test_a_recipe_that_returns_no_config_dict_is_one_error_from_launch(tmp_path, returned):
  recipe = tmp_path / "notdict.py"
  recipe.write_text(f"def get_config():\n  return {returned}\n")
  r = run_python("launch.py", f"--config={recipe}")
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  said = {"5": "the recipe's get_config() returned int", "{": "the config has no "}
  assert r.stderr.strip().startswith(f"error: {said[returned[0]]}"), r.stderr


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections'
def test_a_recipe_key_of_another_type_names_the_key_the_value_and_the_type(tmp_path):
  """ml_collections said "Could not override field 'batch_size' (reference). abc is of original
  type <class 'str'> and cannot be casted to type <class 'int'>"."""
  typed = tmp_path / "typed.py"
  typed.write_text("from jaxgpt import defaults\n\ndef get_config():\n"
                   "  c = defaults.get_config()\n  c.batch_size = 'abc'\n  return c\n")
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "a recipe", flag_values=values)
  with pytest.raises(flags.Error) as refused:
    values(["launch.py", f"--config={typed}"])
  assert cli._flag_error(refused.value) == (
      f"--config={typed}: line 5 sets batch_size to 'abc', a str; batch_size takes an int")


@pytest.mark.slow  # a command line
def test_a_recipe_without_return_is_not_called_missing(tmp_path):
  recipe = tmp_path / "noreturn.py"
  recipe.write_text("from jaxgpt import defaults\n\ndef get_config():\n"
                    "  c = defaults.get_config()\n  c.max_iters = 3\n")
  r = run_python("launch.py", f"--config={recipe}")
  assert r.returncode == 1 and "Traceback" not in r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
  expected = (f"error: --config={recipe}: the recipe gave no config (its get_config() "
              "returned None: a missing `return c`?)")
  assert errors == [expected], r.stderr


@pytest.mark.slow  # a command line
def test_a_recipe_that_cannot_load_reads_the_same_with_an_override(tmp_path):
  r = run_python("launch.py", f"--config={tmp_path}/missing.py", "--config.max_iters=3")
  assert r.returncode == 1
  assert r.stderr.strip() == ("error: --config: the recipe file could not be loaded: [Errno 2] "
                              f"No such file or directory: '{tmp_path}/missing.py'")
  (tmp_path / "noget.py").write_text("x = 1\n")
  r = run_python("launch.py", f"--config={tmp_path}/noget.py")
  assert r.stderr.strip() == (  # a nanoGPT config's KEY = VALUE lines, say
      "error: --config: the recipe file defines no get_config(); its keys go in one, as in "
      "configs/quickstart.py: c = defaults.get_config(), c.KEY = VALUE, return c")


@pytest.mark.slow  # a command line
def test_a_misspelled_recipe_is_told_the_one_it_likely_meant():
  r = run_python("launch.py", "--config=configs/fineweb40m.py")
  assert r.returncode == 1
  assert r.stderr.strip() == ("error: --config: the recipe file could not be loaded: [Errno 2] "
                              "No such file or directory: 'configs/fineweb40m.py' (did you mean "
                              "configs/fineweb_40m.py?)")


@pytest.mark.slow  # a command line
def test_a_file_a_recipe_opens_is_not_taken_for_a_misspelled_recipe(tmp_path):
  recipe = tmp_path / "mine.py"  # a recipe reading its settings from a file that is not there
  recipe.write_text(f"def get_config():\n  open({str(tmp_path / 'mine.txt')!r})\n")
  r = run_python("launch.py", f"--config={recipe}", "--config.max_iters=3")
  assert r.returncode == 1 and "did you mean" not in r.stderr, r.stderr
  assert "No such file or directory" in r.stderr and "Traceback" not in r.stderr


LOCKED_RECIPE = """from jaxgpt import defaults
def get_config():
  c = defaults.get_config()
  c.lock()
  c.max_iter = 5
"""
# ml_collections' message, less the whole config (2,000 characters) it lists between its sentences
LOCKED_SAID = ('line 5: AttributeError: Key "max_iter" does not exist and cannot be added since '
               'the config is locked. Did you mean "max_iters" instead of "max_iter"?')


@pytest.mark.slow  # a command line
def test_a_recipe_file_s_own_error_is_quoted_as_python_says_it(tmp_path):
  """The line named its error with the quotes at its ends stripped, which are Python's own:
  `(' was never closed`, `No module named 'x`."""
  for name, text, said in [
      ("syntax.py", "def get_config():\n  return dict(\n",
       "line 2: SyntaxError: '(' was never closed"),
      ("imports.py", "import nowhere\n", "line 1: ModuleNotFoundError: No module named 'nowhere'"),
      ("key.py", "def get_config():\n  return {}['max_iter']\n", "line 2: KeyError: max_iter"),
      ("locked.py", LOCKED_RECIPE, LOCKED_SAID)]:
    (tmp_path / name).write_text(text)
    r = run_python("launch.py", f"--config={tmp_path / name}")
    assert r.returncode == 1 and r.stderr.strip() == f"error: --config: {tmp_path / name}, {said}"
