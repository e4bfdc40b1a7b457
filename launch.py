"""Trains a GPT: `python launch.py --config=configs/NAME.py [--config.KEY=VALUE ...]`.

The loop (jaxgpt/train.py) trains; this entry hands it what a config asks for
beyond that, each from its layer: token shards made where they are missing
(jaxgpt/prep) and, imported only when asked, GPT-2's or a nanoGPT run's
weights to start from (jaxgpt/interop), evaluation tasks scored in the loop
(jaxgpt/evals) and a closing sample (jaxgpt/inference).

Multi-host: SLURM and Open MPI jobs are joined automatically; elsewhere pass
--coordinator_address, --num_processes and --process_id to every process.
"""

from jaxgpt import preemption

if __name__ == "__main__":  # a stop while the libraries below load ends the run with one line
  preemption.catch_early()

import os
from typing import Any

import jax
import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from jaxgpt import attention, cli, data, defaults, formatting, run_dir, sharding, sinks, train
from jaxgpt.errors import UserError
from jaxgpt.model import ARCHITECTURE, GPT, GPTConfig
from jaxgpt.token_files import SPLITS, find_shards


def run(config: ml_collections.ConfigDict, config_file: str = "") -> dict[str, float]:
  """The run `config` (read from `config_file`) asks for; returns the last evaluation's
  losses."""
  defaults.validate(config)
  sharding.check_same(config.to_dict(), train.DIFFERENT_CONFIGS)  # before the steps it decides
  if config.auto_resume:  # the same command, rerun by a scheduler, goes on
    config = _resumed_where_saved(config)
  if defaults.view(train.LoopConfig, config).writes:  # eval_only on a resume writes nothing
    sharding.agreed("checking out_dir", _check_apart_from_data, config.out_dir,
                    data.resolve_data_dir(config.dataset, config.data_dir))
  train.check_start(config)  # before hours of data prep, a download or a weights load
  if config.eval_tasks or config.sample_tokens > 0:  # said before hours of data prep
    def check_text() -> None:  # each host's own files: the weights (their vocabulary), the tasks
      vocab_size = config.vocab_size
      if config.init_from not in ("scratch", "resume"):  # the weights', read without them
        from jaxgpt.interop import weights
        vocab_size = weights.architecture(config.init_from, config.hf_checkpoint_dir,
                                          config.block_size)["vocab_size"]
      if config.eval_tasks:  # a task file missing or unreadable
        from jaxgpt import tokenizer
        from jaxgpt.evals import tasks
        tokenizer.require_gpt2_vocabulary(vocab_size, "every task's text is")
        tasks.check_files(config.eval_tasks, config.hellaswag_file, config.eval_tasks_limit)
      if config.sample_tokens > 0:
        _check_closing_sample(vocab_size, config.sample_tokens)

    sharding.agreed("checking the eval tasks and the closing sample", check_text)
  # tensorboardX and W&B, where asked for, are there: said before hours of data prep or a download.
  sharding.agreed("importing tensorboardX or W&B",
                  sinks.require_packages if jax.process_index() == 0 else lambda _: None,
                  defaults.view(sinks.SinkConfig, config))
  # A missing dataset is made (python_docs, or FineWeb with auto_prepare); else an error says how,
  # and the other processes stop with it (a host's own copy may be missing on that host alone).
  from jaxgpt.prep import datasets
  sharding.agreed("making or finding the data", lambda: datasets.ensure(
      config.dataset, data.resolve_data_dir(config.dataset, config.data_dir),
      auto_prepare=config.auto_prepare))
  params = None  # nanoGPT's init, or the checkpoint's weights
  if config.init_from not in ("scratch", "resume"):  # gpt2* or nanogpt:PATH: weights and shape
    from jaxgpt.interop import weights
    config, params = sharding.agreed("loading the weights", weights.for_training, config)
  config = attention.settle(config)
  model = GPTConfig.from_config(config)
  hooks = train.Hooks(
      tasks=_tasks(model, config.sharding, config.eval_tasks, config.eval_tasks_limit,
                   config.hellaswag_file),
      at_end=_closing_sample(model, config.sample_start, config.sample_tokens, config.seed))
  return train.train(config, params=params, hooks=hooks, config_file=config_file)


def _resumed_where_saved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """auto_resume: the config with init_from=resume where out_dir holds checkpoints (every
  process must see them alike), else as it is. A run that started from GPT-2's or a nanoGPT
  run's weights took their architecture, which its recipe does not hold: it resumes with the
  one its checkpoints were saved with."""
  if config.init_from == "resume":
    return config
  rundir = run_dir.RunDir(config.out_dir)
  steps = sharding.agreed("listing the checkpoints", rundir.finished_steps)
  sharding.check_same({"checkpoints": bool(steps)}, f"auto_resume: the processes see "
                      f"{rundir.checkpoints_dir} apart (checkpoints on some, none on others); "
                      f"{run_dir.SHARED}")
  if not steps:
    logging.info("auto_resume: no checkpoints in %s, so the run starts as init_from=%s",
                 rundir.checkpoints_dir, config.init_from)
    return config
  resumed = config.copy_and_resolve_references()
  resumed.init_from = "resume"
  if config.init_from != "scratch":
    saved = sharding.agreed("reading the checkpoints' config", rundir.saved_config, steps)
    from jaxgpt.interop import weights
    sharding.agreed("checking the run's weights", weights.check_started_from, config.init_from,
                    saved, rundir.checkpoints_dir)
    resumed.update({key: saved[key] for key in ARCHITECTURE if key in saved})
  logging.info("auto_resume: %s holds checkpoints (the newest of step %d), so the run resumes "
               "from them in place of init_from=%s", rundir.checkpoints_dir, steps[-1],
               config.init_from)
  return resumed


def _check_apart_from_data(out_dir: str, data_dir: str) -> None:
  """A run's checkpoints and metrics never go among a dataset's files (out_dir set to the
  data_dir, a typo): refused before anything is written there."""
  out = os.path.realpath(os.path.expanduser(out_dir))
  tokens = [path for split in SPLITS for path in find_shards(out, split)]
  if out == os.path.realpath(data_dir) or tokens:
    what = (f"holds token files ({os.path.basename(tokens[0])}, ...)" if tokens else
            "is the data_dir")
    raise UserError(f"out_dir={out_dir!r} {what}: a run would write its checkpoints and "
                    "metrics among the dataset's files; give the run its own --config.out_dir")


def _tasks(model: GPTConfig, mode: str, spec: str, limit: int, hellaswag_file: str
           ) -> train.TasksHook | None:
  """eval_tasks, read and batched once (each evaluation reuses their compiled shapes), scored
  on the run's devices as its `mode` of sharding holds the params."""
  if not spec:
    return None
  from jaxgpt.evals import tasks
  from jaxgpt.inference import scoring
  scorer = scoring.Scorer(GPT(model), mesh=sharding.make_mesh(), data_parallel=mode == "dp")
  task_list = tasks.load(spec, scorer, limit=limit, hellaswag_file=hellaswag_file)
  for task in task_list:
    logging.info("eval task %s: %s, %s in %s", task.name, task.source,
                 formatting.plural(task.n_rows, "row"),
                 formatting.plural(len(task.batches), "batch", "batches"))
  return lambda params: tasks.score(scorer, params, task_list)


def _closing_sample(model: GPTConfig, prompt: str, tokens: int, seed: int
                    ) -> train.EndHook | None:
  """sample_tokens > 0: a continuation of sample_start by the trained model, printed at the end."""
  if tokens <= 0:
    return None
  from jaxgpt.inference import decoding

  def print_sample(params: Any) -> None:
    text = decoding.continuation(GPT(model), params, prompt, max_new_tokens=tokens, seed=seed)
    if jax.process_index() == 0:
      print(f"---------------\n{text.rstrip()}\n---------------", flush=True)

  return print_sample


def _check_closing_sample(vocab_size: int, tokens: int) -> None:
  """A closing sample the model could not write (another vocabulary, too many tokens): said
  before the run, not after it."""
  from jaxgpt import tokenizer
  from jaxgpt.inference import decoding
  try:
    tokenizer.require_gpt2_vocabulary(vocab_size, "the closing sample is")
    decoding.check_settings(tokens, decoding.TEMPERATURE, decoding.TOP_K, top_p=None)
  except UserError as e:
    raise UserError(f"config.sample_tokens={tokens}: {e}; set --config.sample_tokens=0") from None


def _is_host_and_port(address: str) -> bool:
  """'' (unset) or HOST:PORT, an IPv6 host in brackets ([::1]:1234), as JAX splits it."""
  host, _, port = address.rpartition(":")
  ipv6_unbracketed = ":" in host and not (host.startswith("[") and host.endswith("]"))
  return not address or (bool(host) and not ipv6_unbracketed and port.isascii()
                         and port.isdigit() and 0 < int(port) < 65536)


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None,
                                  "Run recipe: a configs/*.py file, e.g. configs/quickstart.py.",
                                  lock_config=True)
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-host run")
  flags.DEFINE_integer("num_processes", 0, "processes in a multi-host run", lower_bound=0)
  flags.DEFINE_integer("process_id", -1, "this process's index in a multi-host run",
                       lower_bound=-1)
  # JAX would end in a traceback, or abort the process for a port past 65535.
  flags.register_validator("coordinator_address", _is_host_and_port,
                           "is not HOST:PORT with a port from 1 to 65535")
  flags.mark_flags_as_required(["config"])


def main() -> None:
  f = flags.FLAGS
  defaults.validate(f.config)  # a recipe's get_config() that returned 5 or a dict: one line
  # An evaluation of a checkpoint, maybe beside the run's training (auto_resume: where out_dir
  # holds checkpoints, which `run` finds after JAX has started).
  if f.config.eval_only and (f.config.init_from == "resume" or f.config.auto_resume):
    cli.take_device_memory_as_needed()
  sharding.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
  preemption.handle_stops_until_training(jax.process_count())
  # One process speaks for the run; the others report only warnings and errors.
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  elif not f["verbosity"].present:  # absl's default is warnings alone; --verbosity=-1 asks that
    logging.set_verbosity(logging.INFO)
  run(f.config, config_flags.get_config_filename(f["config"]))


def _key_help() -> str:
  """--help's config keys, at the --config recipe's values where one is named."""
  config = flags.FLAGS["config"].value
  if config is not None:
    defaults.validate(config)  # as main's: a get_config() that returned 5 is one line
  return defaults.key_help(config and config.to_dict())


if __name__ == "__main__":
  _define_flags()
  cli.run(main, more_help=_key_help)
