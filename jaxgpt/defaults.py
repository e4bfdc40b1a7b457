"""The one config schema: every key a run reads, its default, and what it means.

Keys keep nanoGPT's names so `--config.max_iters=20000` means what a nanoGPT
user expects. Recipe files in `configs/` start from `get_config()` and only
override values; a key that is not here is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import inspect
import math
import numbers
import os
import re
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

import ml_collections
import numpy as np

from jaxgpt.errors import UserError

DTYPES = ("float32", "bfloat16")
GPT2_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's (interop/gpt2.py)
INIT_FROM = ("scratch", "resume") + GPT2_MODELS  # or NANOGPT + a ckpt.pt path
NANOGPT = "nanogpt:"  # init_from=nanogpt:PATH reads a nanoGPT ckpt.pt (interop/nanogpt.py)
EVAL_TASKS = ("hellaswag", "text:FILE")  # what `evaluate` and eval_tasks score (evals/tasks.py)
REMAT_POLICIES = ("none", "dots", "full")  # what the backward pass recomputes: see model.py
# The values each enum key may take (`validate`).
CHOICES = {"dtype": DTYPES, "attention": ("xla", "cudnn", "auto"), "remat": REMAT_POLICIES,
           "sharding": ("dp", "fsdp"), "pos_emb": ("learned", "rope"),
           "norm": ("layernorm", "rmsnorm"), "mlp_act": ("gelu", "relu2"),
           "optimizer": ("adamw", "muon"), "lr_schedule": ("cosine", "wsd")}
# What the modern recipes (configs/*_modern.py) change, each key measured alone and
# together in docs/benchmarks.md ("A modern recipe"); their learning rates are per recipe.
# Every other key's default is nanoGPT's (GPT-2's architecture).
MODERN = {"pos_emb": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp_act": "relu2",
          "tie_embeddings": False, "zero_init_projections": True, "logit_softcap": 30.0,
          "optimizer": "muon", "lr_schedule": "wsd"}


GPT2_VOCAB = 50257  # GPT-2's BPE ids, what `prepare` writes; tokenizer.py builds the BPE
MAX_PREFETCH = 64  # data_prefetch: 20,000 started as many threads and buffered 20 GB at 124M
MAX_DATA_WORKERS = 64  # processes of ~250 MB each: 200 would fill a host before the first step
MIN_PEAK_FLOPS = 1e9  # peak_flops is in FLOP/s: a smaller figure is in TFLOP/s, say
PEAK_FLOPS_RULE = (f"is in FLOP/s: at least {MIN_PEAK_FLOPS:g} (an H100's dense bf16 peak is "
                   "989.5e12), or 0 (looked up by device kind)")
MAX_SOFTCAP = 1e4  # tanh is the identity in float32 above it; from ~1e37 logits / cap flush to 0


def get_config() -> ml_collections.ConfigDict:
  """Returns nanoGPT's defaults (GPT-2 124M on OpenWebText) plus jaxgpt's own keys."""
  c = ml_collections.ConfigDict()

  # I/O
  c.out_dir = "out"  # run directory: checkpoints/, metrics.jsonl, config.json
  c.eval_interval = 2000  # evaluate (and checkpoint) every this many iterations
  c.log_interval = 1  # print a train line every this many iterations
  c.eval_iters = 200  # batches per split for each evaluation
  c.eval_only = False  # evaluate once at the start, then exit
  c.always_save_checkpoint = True  # save at every eval, not only on a new best val loss
  # 'scratch', 'resume' (latest good checkpoint in out_dir), 'gpt2*' or 'nanogpt:PATH' (a
  # nanoGPT ckpt.pt: its weights and architecture, a fresh optimizer; needs torch)
  c.init_from = "scratch"
  c.hf_checkpoint_dir = ""  # init_from=gpt2*: local Hugging Face checkpoint; '' downloads it
  # True: a start where out_dir holds checkpoints resumes them, as init_from=resume would, and
  # init_from says how the run starts where there are none: a job that its scheduler reruns
  # (SLURM's --requeue) goes on with the same command
  c.auto_resume = False
  c.keep_checkpoints = 3  # the latest this many checkpoints are kept, plus the best by val loss
  c.skip_nonfinite = 0  # iterations with a non-finite loss/gradient to skip before stopping
  c.sample_tokens = 0  # after training, print this many sampled tokens (0: none)
  c.sample_start = ""  # the closing sample's prompt; '' starts a new document
  c.eval_tasks = ""  # comma-separated: 'hellaswag', 'text:FILE' (perplexity); '' for none
  # score eval_tasks every this many iters; follows eval_interval unless set itself
  c.eval_tasks_interval = c.get_ref("eval_interval").identity()
  c.eval_tasks_limit = 0  # score only the first this many examples (or text windows); 0: all
  c.hellaswag_file = ""  # HellaSwag's hellaswag_val.jsonl; '' means data/cache/, downloaded once

  # logging sinks (metrics.jsonl is always written)
  c.tensorboard_log = False  # TensorBoard event files in out_dir/tensorboard (needs tensorboardX)
  c.wandb_log = False  # log to Weights & Biases (needs wandb)
  c.wandb_project = "jaxgpt"  # the W&B project the run logs to (nanoGPT's: "owt")
  c.wandb_run_name = "gpt2"  # the W&B run's display name

  # data
  c.dataset = "openwebtext"  # 'python_docs' (built in, made on first use) or a prepared dataset
  c.data_dir = ""  # token shards (NAME_train_N.bin, train.bin, .npy; val alike); '': data/DATASET
  c.auto_prepare = False  # 'fineweb' or 'fineweb_edu' without shards: download and tokenize them
  c.gradient_accumulation_steps = 40  # micro-batches per iteration per device (nanoGPT: all GPUs')
  c.batch_size = 12  # micro-batch size per device; tokens/iter = accum x batch x devices x block
  c.block_size = 1024  # context length
  c.data_workers = 0  # Grain worker processes (0: read in a thread of the main process)
  c.data_prefetch = 2  # batches read ahead of the step (by threads, and in each worker)

  # model
  c.n_layer = 12  # transformer blocks
  c.n_head = 12  # attention heads per block (head size n_embd / n_head)
  c.n_embd = 768  # width of the residual stream
  c.dropout = 0.0  # 0 for pretraining; try 0.1+ for finetuning
  c.bias = False  # biases in Linear and LayerNorm layers, like GPT-2
  c.vocab_size = 50304  # GPT-2's 50257 padded up to a multiple of 64
  c.gelu_approximate = False  # tanh GELU as GPT-2's weights use; False is nanoGPT's exact erf GELU
  c.attention = "auto"  # 'xla', 'cudnn' (flash attention) or 'auto': cudnn where it runs, else xla
  c.loss_chunk_size = 8192  # tokens per chunk of the fused LM head + loss; 0: whole logits
  c.remat = "none"  # recompute in the backward pass to save memory: 'none', 'dots' or 'full'
  # Departures from GPT-2, each off by default (configs/*_modern.py turn them on):
  c.pos_emb = "learned"  # 'learned' position embeddings (GPT-2) or 'rope' (rotary)
  c.norm = "layernorm"  # 'layernorm' (GPT-2) or 'rmsnorm'
  c.qk_norm = False  # RMSNorm on each head's queries and keys before attention
  c.mlp_act = "gelu"  # 'gelu' (GPT-2) or 'relu2' (ReLU squared)
  c.tie_embeddings = True  # the LM head is the token embedding; False gives it its own matrix
  c.zero_init_projections = False  # start c_proj (and an untied head) at zero, not at random
  c.logit_softcap = 0.0  # logits -> cap * tanh(logits / cap); 0 leaves them as they are

  # optimizer
  c.optimizer = "adamw"  # 'adamw', or 'muon': Muon for the blocks' matrices, AdamW for the rest
  c.learning_rate = 6e-4  # max learning rate (AdamW's: all params, or with muon the rest)
  c.max_iters = 600000  # total number of training iterations
  c.weight_decay = 1e-1  # AdamW's, on 2+-dim params (nanoGPT's rule); with muon: wte, wpe, lm_head
  c.beta1 = 0.9  # AdamW's first-moment decay (Muon's momentum is muon_momentum)
  c.beta2 = 0.95  # AdamW's second-moment decay
  c.grad_clip = 1.0  # clip gradients at this global norm; 0 disables
  c.muon_learning_rate = 0.02  # optimizer=muon: max learning rate of the matrices, same schedule
  c.muon_momentum = 0.95  # optimizer=muon: Nesterov momentum, reached after the warmup below
  c.muon_momentum_start = 0.85  # optimizer=muon: momentum at iteration 0
  c.muon_momentum_warmup_iters = 300  # linear from muon_momentum_start to muon_momentum

  # learning-rate schedule
  c.decay_lr = True  # warmup then decay by lr_schedule; False keeps learning_rate constant
  c.lr_schedule = "cosine"  # 'cosine' (nanoGPT) or 'wsd': warmup, stable, then linear decay
  c.wsd_decay_frac = 0.2  # lr_schedule=wsd: this last fraction of the iterations after warmup decays
  c.warmup_iters = 2000  # linear warmup: learning_rate * (it + 1) / (warmup_iters + 1)
  # ~= max_iters per Chinchilla: follows max_iters unless set itself, so a recipe's
  # --config.max_iters=N override brings its decay along.
  c.lr_decay_iters = c.get_ref("max_iters").identity()
  c.min_lr = 6e-5  # ~= learning_rate / 10 per Chinchilla; muon's floor scales alike

  # system
  c.sharding = "dp"  # over all devices: 'dp' replicates params, 'fsdp' splits params and Adam state
  c.dtype = "bfloat16"  # compute dtype: 'float32' or 'bfloat16'; params and loss stay float32
  c.seed = 1337  # the init, dropout, and the order of the train and eval windows
  c.peak_flops = 0.0  # peak FLOP/s of one device for MFU; 0 looks it up by device kind
  return c


def key_help(recipe: dict[str, Any] | None = None) -> str:
  """Every config key with its comment in `get_config`, by section, at its default or at the
  value of `recipe` (a recipe's config, as a dict): what `launch.py --help` lists."""
  config = {**get_config().to_dict(), **(recipe or {})}
  values = "the recipe's values" if recipe else (
      "nanoGPT's defaults, which a recipe in configs/ overrides in part")
  lines = [textwrap.fill(f"config keys (--config.KEY=VALUE; {values}; the schema: "
                         "jaxgpt/defaults.py):", 100)]
  source = inspect.getsource(get_config).splitlines()
  note: list[str] = []
  for previous, line in zip([""] + source, source):
    line = line.strip()
    key = re.match(r"c\.(\w+) = [^#]*(?:#\s*(.*))?$", line)
    if line.startswith("#"):
      if not previous.strip() or line.endswith(":"):  # a section or a group's heading
        lines.append(line[1:].strip())
      else:
        note.append(line[1:].strip())
    elif key:
      words = " ".join(note + [key[2] or ""]).strip()
      lines.append(textwrap.fill(f"{key[1]}={config[key[1]]!r}" + (f": {words}" if words else ""),
                                 width=100, initial_indent="  ", subsequent_indent="      ",
                                 break_long_words=False, break_on_hyphens=False))  # paths whole
      note = []
  return "\n".join(lines)


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A config a run saved (config.json, a checkpoint's) with every key it predates at its
  default: what that run had then, as it has now. A default that follows another key
  (eval_tasks_interval follows eval_interval) follows the value saved."""
  config = get_config()
  for key in saved.keys() & config.keys():
    with contextlib.suppress(TypeError, ValueError):  # a value of another type: as saved, below
      config[key] = saved[key]
  return {**config.copy_and_resolve_references().to_dict(), **saved}


View = TypeVar("View")


def view(cls: type[View], config: ml_collections.ConfigDict) -> View:
  """A part's typed view of the config: the frozen dataclass `cls` made of the keys of its
  fields' names (model.GPTConfig, optim.OptimConfig, train.LoopConfig)."""
  return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})


CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a clone's root


def recipe(name: str) -> ml_collections.ConfigDict:
  """configs/<name>.py of this checkout, as launch.py loads it."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(CHECKOUT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def eval_tasks(spec: str) -> list[str]:
  """The tasks of a comma-separated spec, each one of EVAL_TASKS; an unknown one is an error.

  A comma that does not start a task belongs to the text:FILE before it (text:a,b.txt is
  the file a,b.txt); a trailing comma is dropped, an empty task elsewhere refused (text:a,,b
  read as the file a,b).
  """
  names: list[str] = []
  pieces = spec.split(",")
  for i, piece in enumerate(pieces):
    name = piece.strip()
    if not name and i < len(pieces) - 1:
      raise UserError("two commas in a row (or a comma first) leave an empty task: list them as "
                      "hellaswag,text:FILE; a file name holding ',,' cannot be given")
    if names and names[-1].startswith("text:") and name and name != "hellaswag" and (
        not name.startswith("text:")):
      names[-1] = f"{names[-1]},{piece}".strip()
    elif name:
      names.append(name)
  for name in names:
    if name == "text:":
      raise UserError("text: names no file: the task is text:FILE")
    if name != "hellaswag" and not name.startswith("text:"):
      raise UserError(f"unknown evaluation task {name!r}: the tasks are {', '.join(EVAL_TASKS)}")
  return names


def _float32(x: float) -> float:
  """x as the step sees it: 0.99999999 is 1.0 there and 1e39 (or 10**400) is inf."""
  try:
    with np.errstate(over="ignore"):
      return float(np.float32(x))
  except OverflowError:  # an int past float64's range
    return math.inf if x > 0 else -math.inf


def _check_schema(values: dict[str, Any]) -> None:
  """Rejects a config whose keys are not the schema's (a recipe that dropped a key, or set one
  the schema lacks), or whose value is of another kind than the schema's (a recipe may set
  any key to None, and an integer key to True, which ml_collections lets through)."""
  schema = get_config()
  missing = sorted(set(schema.keys()) - set(values))
  if missing:
    raise UserError(f"the config has no {', '.join(missing[:4])}{', ...' if missing[4:] else ''}: "
                    "a recipe's get_config() starts from jaxgpt.defaults.get_config()")
  unknown = sorted(set(values) - set(schema.keys()))
  if unknown:  # `c.max_iter = 10` in a recipe: an unlocked ConfigDict takes any new key
    near = difflib.get_close_matches(unknown[0], schema.keys(), n=1)
    raise UserError(f"config.{unknown[0]}: no such config key" +
                    (f' (did you mean "{near[0]}"?)' if near else "") +
                    "; the recipe sets a key the schema (jaxgpt/defaults.py) does not have")
  kinds = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
  numbers_of = {bool: (bool, np.bool_), int: numbers.Integral, float: numbers.Real, str: str}
  fits = lambda value, default: (isinstance(value, numbers_of[type(default)])  # numpy's too
                                 and (type(default) is bool) == isinstance(value, (bool, np.bool_)))
  wrong = [f"config.{key}={values[key]!r}: must be {kinds[type(default)]}"
           for key, default in schema.items() if not fits(values[key], default)]
  if wrong:  # all of them: a key that follows another (lr_decay_iters, max_iters) is named too
    raise UserError("; ".join(wrong))


def peak_flops_ok(value: float) -> bool:
  """0 (looked up by device kind) or a device's peak in FLOP/s, not TFLOP/s (312)."""
  return value == 0 or MIN_PEAK_FLOPS <= value < math.inf


POSITIVE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                 "gradient_accumulation_steps", "vocab_size", "eval_interval", "log_interval",
                 "eval_iters", "eval_tasks_interval")


def validate(c: ml_collections.ConfigDict) -> None:
  """Rejects values that would fail later or silently train something else."""
  if not callable(getattr(c, "keys", None)):
    raise UserError(f"the recipe's get_config() returned {type(c).__name__}, not a ConfigDict: "
                    "start from c = jaxgpt.defaults.get_config() and return c")
  _check_schema(dict(c.items()))

  def check(ok: bool, key: str, why: str) -> None:
    if not ok:
      raise UserError(f"config.{key}={c[key]!r}: {why}")

  for key in POSITIVE_KEYS:
    check(c[key] > 0, key, "must be positive")
  non_negative = ["max_iters", "loss_chunk_size", "skip_nonfinite", "logit_softcap",
                  "eval_tasks_limit", "learning_rate", "weight_decay", "grad_clip",
                  "warmup_iters", "data_workers", "sample_tokens"]
  fractions = ["dropout", "beta1", "beta2"]  # in [0, 1)
  if c.optimizer == "muon":  # Muon's keys are read only when it runs
    non_negative += ["muon_learning_rate", "muon_momentum_warmup_iters"]
    fractions += ["muon_momentum", "muon_momentum_start"]
  zero_means = {"loss_chunk_size": " (0: no chunks)", "logit_softcap": " (0: no soft-cap)",
                "eval_tasks_limit": " (0: all)", "grad_clip": " (0 disables clipping)"}
  for key in non_negative:  # NaN first: it fails every comparison, >= 0 too
    check(math.isfinite(_float32(c[key])), key, "must be finite" + (  # NaN, inf: plainly
          " as a float32, which the step computes in" if abs(c[key]) < math.inf else ""))
    check(c[key] >= 0, key, "must be >= 0" + zero_means.get(key, ""))
  for key in fractions:
    check(0 <= c[key] < 1, key, "must be in [0, 1)")
    check(_float32(c[key]) < 1, key, "must be below 1 as a float32, which the step computes "
          "in; it rounds to 1.0 there")
  for key in ("max_iters", "warmup_iters", "lr_decay_iters", "muon_momentum_warmup_iters"):
    check(c[key] < 2**31, key, "must be below 2**31: the step counts iterations in int32")
  check(c.logit_softcap == 0 or 1 <= c.logit_softcap <= MAX_SOFTCAP, "logit_softcap", "must be 0 "
        f"(no soft-cap) or in [1, {MAX_SOFTCAP:g}]: below 1 it caps every logit; above, none")
  check(c.data_workers <= MAX_DATA_WORKERS, "data_workers", f"must be in [0, {MAX_DATA_WORKERS}]"
        ": processes of their own (~250 MB each); a few keep the step fed")
  check(peak_flops_ok(c.peak_flops), "peak_flops", PEAK_FLOPS_RULE)
  check(c.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
  check(1 <= c.data_prefetch <= MAX_PREFETCH, "data_prefetch", f"must be in [1, {MAX_PREFETCH}]: "
        "batches read ahead (a thread each); a few keep the step fed, more only hold memory")
  check(c.out_dir.strip() != "", "out_dir", "names no directory")
  check(c.dataset.strip() != "", "dataset", "names no dataset")
  check(not c.hf_checkpoint_dir or c.init_from in (*GPT2_MODELS, "resume"), "hf_checkpoint_dir",
        f"is read with init_from=gpt2* alone, and init_from={c.init_from!r} would not read it")
  for key, allowed in CHOICES.items():
    check(c[key] in allowed, key, f"must be one of {allowed}")
  check(c.n_embd % c.n_head == 0, "n_embd", f"must be divisible by n_head={c.n_head}")
  check(c.pos_emb != "rope" or (c.n_embd // c.n_head) % 2 == 0, "pos_emb",
        f"rope needs an even head size; n_embd/n_head is {c.n_embd // c.n_head}")
  check(c.init_from in INIT_FROM or (c.init_from.startswith(NANOGPT) and c.init_from != NANOGPT),
        "init_from", f"must be one of {INIT_FROM} or {NANOGPT}PATH")
  _check_eval_tasks(c.eval_tasks, c.hellaswag_file, check)
  check(0 <= c.seed < 2**32, "seed", "must be in [0, 2**32): a PRNG key holds 32 bits")
  if c.decay_lr and c.max_iters > 0:  # with no iterations to train, no schedule to check
    _check_schedule(c, check)


def _check_eval_tasks(spec: str, hellaswag_file: str,
                      check: Callable[[bool, str, str], None]) -> None:
  """eval_tasks, and a hellaswag_file only where they name hellaswag (else it is never read),
  with `validate`'s `check`."""
  try:
    scored = eval_tasks(spec)
  except UserError as e:
    check(False, "eval_tasks", str(e))
  check(not hellaswag_file or "hellaswag" in scored, "hellaswag_file",
        f"is for the hellaswag task, which eval_tasks={spec!r} does not name")


def _check_schedule(c: ml_collections.ConfigDict, check: Callable[[bool, str, str], None]
                    ) -> None:
  """A decaying learning rate's keys, with `validate`'s `check`."""
  check(c.warmup_iters <= c.max_iters, "warmup_iters",
        f"must be at most max_iters={c.max_iters}: the run would end before its learning "
        "rate is reached. Lower warmup_iters, or raise max_iters")
  check(c.warmup_iters < c.max_iters or c.lr_decay_iters != c.max_iters, "warmup_iters",
        f"must be below max_iters={c.max_iters}, where lr_decay_iters ends the decay that "
        "follows the warmup")
  check(c.lr_decay_iters > c.warmup_iters, "lr_decay_iters",
        f"must be greater than warmup_iters={c.warmup_iters} (it is max_iters where the "
        "recipe does not set it)")
  check(0 <= c.min_lr <= c.learning_rate, "min_lr",
        f"must be in [0, learning_rate={c.learning_rate}]")
  if c.lr_schedule == "wsd":
    check(0 < c.wsd_decay_frac <= 1, "wsd_decay_frac", "must be in (0, 1]")
