"""The weights a run or command starts from: a run's checkpoint, OpenAI's GPT-2, a nanoGPT ckpt.pt.

`init_from` as configs and commands spell it: 'resume' (a checkpoint of
out_dir), 'gpt2*' (gpt2.py) or 'nanogpt:PATH' (nanogpt.py). The flags that
pick them are defined here once, for every command that reads weights.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import jax
import ml_collections
from absl import flags, logging

from jaxgpt import checkpoint, cli, defaults, run_dir, sharding, train_step
from jaxgpt.errors import UserError
from jaxgpt.interop import gpt2, nanogpt
from jaxgpt.model import GPT, GPTConfig


def check_run_path(out_dir: str) -> None:
  """Refuses an out_dir that names no run directory: empty (the working directory's files would
  be read) or a file."""
  if not out_dir.strip():
    raise UserError("out_dir is empty: name the run directory whose checkpoint to read")
  if os.path.isfile(out_dir):
    raise UserError(f"out_dir={out_dir!r} is a file, not a run directory")
  run_dir.check_utf8(out_dir)


def run_steps(out_dir: str, at_step: int | None = None) -> list[int]:
  """The steps of out_dir's checkpoints; a run with none, or without `at_step`, refused."""
  check_run_path(out_dir)
  checkpoints = run_dir.RunDir(out_dir).checkpoints(read_only=True)
  try:
    steps = checkpoints.steps()
  finally:
    checkpoints.close()
  if not steps:
    raise UserError(f"{checkpoints.directory}: no checkpoints; {_what_out_dir_holds(out_dir)}")
  if at_step is not None and at_step not in steps:
    raise UserError(f"{checkpoints.directory}: no checkpoint at step {at_step}; it holds {steps}")
  return steps


def _what_out_dir_holds(out_dir: str) -> str:
  """For an out_dir without checkpoints: nanoGPT's ckpt.pt, or a run's checkpoints/ or one of
  its steps (the path the run's last line prints), named with the flags that read them."""
  nanogpt_ckpt = os.path.join(out_dir, "ckpt.pt")  # nanoGPT's `sample.py --out_dir=DIR`
  if os.path.isfile(nanogpt_ckpt):
    return (f"{nanogpt_ckpt} is nanoGPT's, which sample and evaluate read with "
            f"--init_from={shlex.quote(defaults.NANOGPT + nanogpt_ckpt)} in place of --out_dir")
  parent, name = os.path.split(os.path.normpath(out_dir))
  there = os.path.isdir(out_dir)
  if not there:
    return f"there is no folder {os.path.abspath(out_dir)} (out_dir={out_dir!r})"
  if there and name == "checkpoints":
    return (f"{out_dir} is a run's checkpoints folder: --out_dir={shlex.quote(parent or '.')} "
            "reads it")
  if there and os.path.basename(parent) == "checkpoints" and name.isdigit():
    run = os.path.dirname(parent) or "."
    return (f"{out_dir} is a checkpoint of a run: --out_dir={shlex.quote(run)} --step={name} "
            "reads it")
  if there and os.path.isfile(run_dir.RunDir(out_dir).metrics_path):
    return "the run's records are there: it saved none, or they were removed"
  return f"nothing was trained into out_dir={out_dir!r} yet"


def from_run(out_dir: str, at_step: int | None = None
             ) -> tuple[ml_collections.ConfigDict, Any, int]:
  """(run config, params, step) of the latest (or the given) checkpoint, on one device.

  The latest that reads back (its arrays checked against their fingerprints):
  an unreadable newer one is named and passed over, never moved. One that a run training
  there removes (its keep_checkpoints) as it is read gives way to the newer it saved.
  """
  steps = run_steps(out_dir, at_step)
  checkpoints = run_dir.RunDir(out_dir).checkpoints(read_only=True)
  try:
    for step in reversed(steps if at_step is None else [at_step]):
      try:
        meta = checkpoints.read_meta(step)
        config = defaults.get_config()
        config.update(meta["config"])
        if config.attention == "cudnn":  # the kernel the run's GPU ran; here, this device's
          config.attention = "auto"
        abstract = train_step.build(train_step.StepConfig.from_config(config)).abstract_state
        on_one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        params = checkpoints.restore_params(
            step, sharding.abstract_like(abstract.params, on_one), meta)
        return config, params, step
      except Exception as e:
        newest = (step if at_step is not None else
                  max(checkpoint.finished_steps(checkpoints.directory), default=step))
        if newest > steps[-1]:  # a run training there saved it since they were listed
          logging.info("%s/%d did not read back while the run there saved step %d (its "
                       "keep_checkpoints may be removing it); reading that",
                       checkpoints.directory, step, newest)
          return from_run(out_dir)
        older = [s for s in steps if s < step]
        if at_step is not None or not older:
          raise UserError(f"{checkpoints.directory}/{step} is unreadable ({checkpoint.cause(e)})"
                          + (f"; --step={older[-1]} reads an older one" if older else "")) from e
        logging.warning("%s/%d is unreadable (%s); reading step %d instead",
                        checkpoints.directory, step, checkpoint.cause(e), older[-1])
  finally:
    checkpoints.close()


def pretrained(init_from: str, hf_checkpoint_dir: str = "") -> tuple[dict[str, Any], Any, str]:
  """(architecture keys, float32 params, where from) of GPT-2's or a nanoGPT run's weights."""
  if init_from in defaults.GPT2_MODELS:
    source = gpt2.checkpoint_dir(init_from, hf_checkpoint_dir)
    arch, params = gpt2.load(source)
    return arch, params, f"{init_from} ({source})"
  if init_from.startswith(defaults.NANOGPT):
    path = init_from.removeprefix(defaults.NANOGPT)
    if not path:
      raise UserError(f"--init_from={init_from}: name the ckpt.pt after it "
                      f"({defaults.NANOGPT}out-shakespeare/ckpt.pt, or its out_dir)")
    arch, params, iter_num = nanogpt.read(path)
    return arch, params, f"{path} (nanoGPT iter {iter_num})"
  raise UserError(f"--init_from={init_from}: must be 'resume', one of "
                  f"{', '.join(defaults.GPT2_MODELS)}, or {defaults.NANOGPT}PATH")


def check_started_from(init_from: str, saved: dict[str, Any], run: str) -> None:
  """Refuses to resume `run` (auto_resume: its checkpoints' config `saved`) for a command that
  starts from other weights than the run did, say gpt2-medium's where it took gpt2's: their
  size tells them apart, read without the weights. A nanoGPT ckpt.pt moved since the run
  started (or torch gone) is no reason to stop a resume, which needs neither: it is said."""
  if init_from in defaults.GPT2_MODELS:  # a local hf_checkpoint_dir is held to this size too
    n_layer, n_embd = gpt2.SIZES[init_from]
    theirs = {"n_layer": n_layer, "n_embd": n_embd}
  else:
    try:
      theirs = nanogpt.architecture(init_from.removeprefix(defaults.NANOGPT))
    except UserError as e:
      logging.warning("auto_resume: the run in %s is resumed unchecked against init_from=%s, "
                      "which does not read (%s)", run, init_from, e)
      return
  differ = [f"{key}={saved[key]!r} where they have {value!r}" for key, value in theirs.items()
            if key != "block_size" and key in saved and saved[key] != value]  # block_size: cropped
  if differ:
    raise UserError(f"auto_resume: {run} holds a run that did not start from "
                    f"init_from={init_from}'s weights ({', '.join(differ)}): continue it with "
                    "--config.init_from=resume, or start anew in another out_dir")


def _refuse_unread_flags(init_from: str, step: int | None, hf_checkpoint_dir: str) -> None:
  """Flags the weights of `init_from` do not read: a mistake, not a choice to ignore."""
  if hf_checkpoint_dir and init_from not in defaults.GPT2_MODELS:
    raise UserError(f"--hf_checkpoint_dir holds GPT-2's weights for --init_from=gpt2*; "
                    f"--init_from={init_from} would not read it")
  if step is not None and init_from != "resume":
    raise UserError(f"--step picks a checkpoint of --out_dir for --init_from=resume; "
                    f"--init_from={init_from} has none")


def check_choice(init_from: str, *, out_dir: str, step: int | None = None,
                 hf_checkpoint_dir: str = "") -> tuple[int, int]:
  """What `load` would refuse of the weights it is asked for, said without reading them (nor
  downloading GPT-2's): a command says a mistyped flag before its own slow start (a download).
  Returns their (vocab_size, block_size), which a task in GPT-2's tokens and a text's stride
  need before that start too."""
  _refuse_unread_flags(init_from, step, hf_checkpoint_dir)
  if init_from == "resume":
    steps = run_steps(out_dir, step)
    saved = defaults.with_defaults(  # a key the run predates at its default, as it runs now
        run_dir.RunDir(out_dir).saved_config(steps if step is None else [step]))
    return saved["vocab_size"], saved["block_size"]
  if init_from not in defaults.GPT2_MODELS and not (
      init_from.startswith(defaults.NANOGPT) and init_from != defaults.NANOGPT):
    pretrained(init_from)  # refuses it by name, as `load` would
  arch = _unread_architecture(init_from, hf_checkpoint_dir)
  return arch["vocab_size"], arch["block_size"]


def _unread_architecture(init_from: str, hf_checkpoint_dir: str) -> dict[str, Any]:
  """init_from's architecture keys, read without its weights: GPT-2's from its name or
  hf_checkpoint_dir's config.json, a ckpt.pt's model_args (a zip's tensors unread)."""
  if init_from in defaults.GPT2_MODELS:
    return (gpt2.read_config(gpt2.checkpoint_dir(init_from, hf_checkpoint_dir))
            if hf_checkpoint_dir else gpt2.named_architecture(init_from))
  return nanogpt.architecture(init_from.removeprefix(defaults.NANOGPT))


def load(init_from: str, *, out_dir: str, step: int | None = None, hf_checkpoint_dir: str = "",
         dtype: str | None = None) -> tuple[ml_collections.ConfigDict, Any, str]:
  """(config, params, where they came from); GPT-2 and nanoGPT weights run in float32."""
  _refuse_unread_flags(init_from, step, hf_checkpoint_dir)
  if init_from == "resume":
    config, params, step = from_run(out_dir, step)
    source = f"{out_dir} step {step}"
  else:
    arch, params, source = pretrained(init_from, hf_checkpoint_dir)
    config = defaults.get_config()
    config.update(arch, dropout=0.0, dtype="float32")
  if dtype:
    config.dtype = dtype
  return config, params, source


def refuse_departures(init_from: str, cfg: GPTConfig) -> None:
  """A config of the modern keys is refused weights: theirs are GPT-2's architecture."""
  departures = gpt2.differences(cfg)
  if departures:
    raise UserError(f"config.init_from={init_from!r} loads GPT-2-architecture weights; "
                    f"this config has {', '.join(departures)}")


def _refuse_positions(block_size: int, n_positions: int, source: str) -> None:
  if block_size > n_positions:
    raise UserError(f"config.block_size={block_size} exceeds the {n_positions} "
                    f"positions of {source}: set --config.block_size={n_positions} (or less)")


def architecture(init_from: str, hf_checkpoint_dir: str, block_size: int) -> dict[str, Any]:
  """The architecture keys but block_size (the run's own) that `for_training` gives a run from
  init_from's weights, read without them (for a plan); a block_size past them refused."""
  arch = dict(_unread_architecture(init_from, hf_checkpoint_dir))
  _refuse_positions(block_size, arch.pop("block_size"), init_from)
  return arch


def for_training(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any]:
  """The config with the weights' architecture (as nanoGPT, each change logged), and the
  weights, for init_from=gpt2*|nanogpt:; training goes on from them with a fresh optimizer and
  schedule."""
  refuse_departures(config.init_from, GPTConfig.from_config(config))
  arch, params, source = pretrained(config.init_from, config.hf_checkpoint_dir)
  arch = dict(arch)
  n_positions = arch.pop("block_size")
  _refuse_positions(config.block_size, n_positions, source)
  logging.info("init_from=%s: weights of %s", config.init_from, source)
  if config.block_size < n_positions:
    params["wpe"]["embedding"] = params["wpe"]["embedding"][:config.block_size]
    logging.info("init_from=%s: position embedding cropped to block_size=%d", config.init_from,
                 config.block_size)
  adopted = config.copy_and_resolve_references()
  for key, value in arch.items():
    if config[key] != value:
      logging.info("init_from=%s: %s=%r (config had %r)", config.init_from, key, value,
                   config[key])
      adopted[key] = value
  return adopted, params


def define_run_flags() -> None:
  """--out_dir and --step: which checkpoint of a run a command reads."""
  cli.define_path("out_dir", "out", "Run directory whose checkpoint to read.")
  flags.DEFINE_integer("step", None, "Checkpoint step to read; default the latest.")


def define_flags() -> None:
  """`define_run_flags`, and --init_from, --hf_checkpoint_dir, --dtype: the weights to read."""
  define_run_flags()
  flags.DEFINE_string("init_from", "resume", "'resume': a checkpoint of out_dir; 'gpt2*': "
                      "OpenAI's weights; 'nanogpt:PATH': a nanoGPT ckpt.pt.")
  cli.define_path("hf_checkpoint_dir", "",
                  "init_from=gpt2*: local Hugging Face checkpoint; '' downloads it.")
  flags.DEFINE_enum("dtype", None, defaults.DTYPES, "Activation dtype; default the run's "
                    "(float32 for GPT-2 and nanoGPT weights).")


def refuse_unread_out_dir() -> None:
  """--out_dir given with weights other than a run's, which would not read it, as --step."""
  f = flags.FLAGS
  if f["out_dir"].present and f.init_from != "resume":
    raise UserError(f"--out_dir names the run whose checkpoint --init_from=resume reads; "
                    f"--init_from={f.init_from} would not read it" +
                    ("; a nanoGPT run's out_dir goes after nanogpt:"
                     if f.init_from.startswith(defaults.NANOGPT) else ""))


def from_flags() -> tuple[ml_collections.ConfigDict, GPT, Any, str]:
  """(config, model, params, where from) of the weights the flags of `define_flags` pick."""
  f = flags.FLAGS
  refuse_unread_out_dir()
  config, params, source = load(f.init_from, out_dir=f.out_dir, step=f.step,
                                hf_checkpoint_dir=f.hf_checkpoint_dir, dtype=f.dtype)
  params = jax.device_put(params)  # host arrays (GPT-2, nanoGPT) copied once, not per call
  return config, GPT(GPTConfig.from_config(config)), params, source
