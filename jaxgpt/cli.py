"""What every command line shares (docs/design.md, "One CLI convention"); `cli.run(main)`
replaces `absl.app.run(main)`.

A user's mistake (on the command line, a `UserError`, a recipe file that raises, named by its
line) is one `error:` line and exit 1; a stop before training is one line and exit 0; a second
Ctrl-C, exit 130. The log shows `HH:MM:SS message`, `--verbosity=1` everything.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import itertools
import logging as pylogging
import os
import re
import signal
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import NoReturn

from absl import app, flags, logging

from jaxgpt import defaults, preemption
from jaxgpt.errors import FULL, UserError, first_line

TRACEBACK_ENV = "JAXGPT_TRACEBACK"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LAUNCH = os.path.join(defaults.CHECKOUT, "launch.py")


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")
# nanoGPT's keys and flags that JAX has no use for, with what does their job here.
NANOGPT_ONLY = {
    "compile": "JAX compiles every step (jax.jit) without one; leave it out",
    "device": "JAX runs on the GPUs it finds; JAX_PLATFORMS=cpu runs on the CPU, "
              "CUDA_VISIBLE_DEVICES picks GPUs",
    "backend": "several GPUs need no backend: every device JAX finds trains (README: Several "
               "GPUs and hosts)",
}


class _PathParser(flags.ArgumentParser):
  """A path, `~` expanded: the shell leaves `--out=~/x` as it is. An empty one is refused
  unless '' is the flag's default (GPT-2's or HellaSwag's download): it was taken as the
  working directory, or as the flag not given."""

  def __init__(self, empty_ok: bool = False) -> None:
    self.empty_ok = empty_ok

  def parse(self, argument: str) -> str:
    if not (argument.strip() or self.empty_ok):
      raise ValueError("names no file or folder")
    return os.path.expanduser(argument)

  def flag_type(self) -> str:
    return "path"


def define_path(name: str, default: str | None, help_text: str, *, multi: bool = False) -> None:
  """A string flag naming a file or directory; repeatable with `multi`."""
  parser = _PathParser(empty_ok=default == "")
  if multi:
    flags.DEFINE_multi(parser, flags.ArgumentSerializer(), name, default, help_text)
  else:
    flags.DEFINE(parser, name, default, help_text)


class _Terminated(KeyboardInterrupt):
  """SIGTERM, raised in the main thread as a Ctrl-C is: the cleanup a Ctrl-C gets runs."""

  signum = signal.SIGTERM  # for `preemption.send_again`


def _terminate(signum: int, frame) -> None:
  raise _Terminated


def _exit(code: int | str, interrupted: bool = False) -> NoReturn:
  """sys.exit(code), or, where an exception from a signal handler may have left XLA compiling
  in threads of its own (a Ctrl-C's, `preemption.raised_into_work`), an exit that skips
  Python's finalization, which crashes under them (SIGSEGV): output flushed, `code` kept."""
  if not (interrupted or preemption.raised_into_work()):
    sys.exit(code)
  if isinstance(code, str):
    print(code, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code if isinstance(code, int) else 1)


@contextlib.contextmanager
def sigterm_stops(said: str) -> Iterator[None]:
  """Within, SIGTERM (a scheduler's, `timeout`'s) stops a command that writes files as Ctrl-C
  does, taking out what it wrote (left to its default, it would leave them half-written); then
  one line, 'stopped by SIGTERM: `said`', and exit 143 as a process ended by it."""
  previous = signal.signal(signal.SIGTERM, _terminate)
  try:
    yield
  except _Terminated:
    print(f"stopped by SIGTERM: {said}", file=sys.stderr)
    _exit(128 + signal.SIGTERM, interrupted=True)
  finally:
    signal.signal(signal.SIGTERM, previous)


def run(main: Callable[..., None], *, subcommands: tuple[str, ...] = (),
        more_help: Callable[[], str] | None = None, beside_training: bool = False) -> None:
  """Runs `main` as a command: main() or, with `subcommands`, main(subcommand).

  `--help` prints the command's docstring, its own flags and `more_help()`,
  and exits 0 (absl's exits 1 and heads each module with its file path); beside a --config
  recipe, after the flags are read, so that `more_help` can list the recipe's values.
  A command run `beside_training` on its GPU (sample, evaluate, export, plan) takes device
  memory as it needs it (`take_device_memory_as_needed`).
  """
  if beside_training:
    take_device_memory_as_needed()
  sys.unraisablehook = _unraisable
  # For the resource tracker that Grain's worker processes start: Python before 3.13 tracks a
  # shared-memory batch in each process that opens it (cpython#82300), so a run that stops with
  # a batch in flight ends with its warnings of "leaked" blocks already removed (or removed by
  # the tracker itself, as it would be anyway).
  os.environ["PYTHONWARNINGS"] = ",".join(
      filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:resource_tracker:UserWarning"]))
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    asked = [arg for arg in sys.argv if arg not in HELP_FLAGS]
    if more_help and _recipe_paths(asked):
      _parse_flags(asked)
    _guarded(lambda _: print(_help(more_help)))(sys.argv)  # a recipe's error: one line

  def with_arguments(argv: list[str]) -> None:
    words, chosen = argv[1:], []
    if subcommands:
      if not words or words[0] not in subcommands:
        raise UserError(_unknown_subcommand(subcommands, words))
      chosen, words = words[:1], words[1:]
    if words:
      raise UserError(f"unexpected argument(s): {' '.join(words)} (flags are --name=value)")
    main(*chosen)

  def parse_flags(argv: list[str]) -> list[str]:
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    absl_help = any(arg.lstrip("-").startswith("help") for arg in argv[1:])  # --helpfull: absl's
    if subcommands and not words and not absl_help:  # the choice first, before flags it requires
      sys.exit(f"error: {_unknown_subcommand(subcommands, [])}")
    if subcommands and argv[1:2] and not argv[1].startswith("-") and argv[1] not in subcommands:
      sys.exit(f"error: {_unknown_subcommand(subcommands, argv[1:2])}")  # before flags it lacks
    return _parse_flags(argv)

  app.run(_guarded(with_arguments), flags_parser=parse_flags)


def take_device_memory_as_needed() -> None:
  """JAX takes 75% of a GPU's memory at its start (before its first use of the device), which a
  training run on the GPU holds already; this has it take what it needs as it goes."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _unknown_subcommand(subcommands: tuple[str, ...], words: list[str]) -> str:
  """The error for a command line whose first word names none of `subcommands`."""
  got = f" (got: {' '.join(words)})" if words else ""
  return f"name one of {', '.join(subcommands)}{got}"


def _help(more_help: Callable[[], str] | None) -> str:
  doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
  lines = [doc, "", "flags:"]
  for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
    path = os.path.abspath(module) if module.endswith(".py") else ""
    if module.startswith("jaxgpt") or path.startswith(_PACKAGE_DIR) or path == _LAUNCH:
      lines += [_flag_help(flag) for flag in sorted(module_flags, key=lambda f: f.name)]
  lines.append("  --helpfull: every flag, the libraries' too")
  return "\n".join(lines + (["", more_help()] if more_help else []))


def _help_text(flag: flags.Flag) -> str:
  """A flag's help without absl's note on a repeatable flag (its own help says so)."""
  return re.sub(r";\s*repeat this option to specify a list of values$", "", flag.help)


def _flag_help(flag: flags.Flag) -> str:
  name = f"[no]{flag.name}" if flag.boolean else flag.name
  notes = ["repeatable"] if isinstance(flag, flags.MultiFlag) else []
  if any("must have a value other than None" in getattr(v, "message", "")
         for v in flag.validators):
    notes.append("required")
  elif flag.default not in (None, "", []):
    default = flag.default[0] if isinstance(flag, flags.MultiFlag) else flag.default
    notes.append(f"default {default!r}" if isinstance(default, str) else f"default {default}")
  line = f"--{name}: {_help_text(flag)}" + (f" ({'; '.join(notes)})" if notes else "")
  return textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="      ")


# ml_collections' error where a recipe file failed to load; its cause is on the last line.
_LOAD_FAILED = "Configuration is not available because of an earlier failure to load: "


def _not_loaded(last_line: str, argv: list[str]) -> str:
  cause = last_line.strip().removeprefix(_LOAD_FAILED)
  return ("error: --config: the recipe file could not be loaded: "
          f"{cause}{_near_recipe(cause, argv)}")


def _near_recipe(cause: str, argv: list[str]) -> str:
  """' (did you mean configs/X.py?)' where the file missing is the --config recipe (not one it
  opens) and a recipe beside it is spelled alike: a typo's."""
  missing = re.search(r"No such file or directory: '(.+)'$", cause)
  if not missing or os.path.abspath(missing[1]) not in _recipe_paths(argv):
    return ""
  folder = os.path.dirname(missing[1])
  recipes = [n for n in os.listdir(folder or ".") if n.endswith(".py")] if os.path.isdir(
      folder or ".") else []
  near = difflib.get_close_matches(os.path.basename(missing[1]), recipes, n=1)
  return f" (did you mean {os.path.join(folder, near[0])}?)" if near else ""


def _parse_flags(argv: list[str]) -> list[str]:
  # A shell leaves --config=~/x as it is (every other path flag expands it where it is read).
  argv = [f"--config={os.path.expanduser(a[9:])}" if a.startswith("--config=~") else a
          for a in argv]
  given = sum(a == "--config" or a.startswith("--config=") for a in argv)
  if given > 1:  # absl: the last wins
    sys.exit("error: --config: given twice; a run reads one recipe (--config.KEY=VALUE sets "
             "its keys)")
  recipes = [a for before, a in itertools.pairwise(argv) if a.endswith(".py") and not
             a.startswith("-") and not (before.startswith("-") and "=" not in before)]
  if "config" in flags.FLAGS and recipes and not given:
    sys.exit(f"error: {recipes[0]}: name the recipe as --config={recipes[0]} (and its keys as "
             "--config.KEY=VALUE)")  # nanoGPT's `train.py config/FILE.py`
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {_flag_error(e)}")
  except Exception as e:  # a --config.KEY, or a recipe file's own mistake
    inner, lines = _innermost(e)  # ml_collections': "'max_iter'", "Did you mean ..."
    # A KeyError's quotes are its repr's; another's ("'(' was never closed") are its message's.
    unquoted = [text.strip("'\"") for text in lines] if isinstance(inner, KeyError) else lines
    line = _recipe_line(e, argv)
    if line is not None and not os.environ.get(TRACEBACK_ENV):
      sys.exit(f"error: --config: {line}: {type(e).__name__}: {' '.join(unquoted)}")
    if not isinstance(e, (AttributeError, KeyError, TypeError, ValueError, OSError)):
      raise
    if isinstance(inner, KeyError) and lines:
      if unquoted[0] in NANOGPT_ONLY:
        sys.exit(f"error: --config.{unquoted[0]}: no such config key; "
                 f"{NANOGPT_ONLY[unquoted[0]]}")
      sys.exit(" ".join([f"error: --config.{unquoted[0]}: no such config key.", *lines[1:]]))
    if lines and lines[0].startswith(_LOAD_FAILED):  # the recipe file, read for a --config.KEY
      sys.exit(_not_loaded(lines[-1], argv))
    if "has no attribute 'get_config'" in ' '.join(lines):  # a nanoGPT config's KEY = VALUE
      sys.exit("error: --config: the recipe file defines no get_config(); its keys go in one, "
               "as in configs/quickstart.py: c = defaults.get_config(), c.KEY = VALUE, return c")
    sys.exit(f"error: {' '.join(lines)}")


def _recipe_line(error: Exception, argv: list[str]) -> str | None:
  """'FILE, line N' in the --config recipe file where `error` was raised, if it was."""
  recipes = _recipe_paths(argv)
  if isinstance(error, SyntaxError):
    frames = [(error.filename or "", error.lineno)]
  else:
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(error.__traceback__)]
  lines = [f"{name}, line {n}" for name, n in frames if os.path.abspath(name) in recipes]
  return lines[-1] if lines else None


def _recipe_paths(argv: list[str]) -> set[str]:
  """The --config recipe files `argv` names (--config=FILE or --config FILE, less
  ml_collections' :ARGS), as absolute paths."""
  return {os.path.abspath(os.path.expanduser(b if a == "--config" else a[9:]).split(":", 1)[0])
          for a, b in zip(argv, [*argv[1:], ""])
          if (a == "--config" and b) or a.startswith("--config=")}


def _flag_error(error: flags.Error) -> str:
  """absl's message, as a user would say it."""
  text = str(error)
  required = re.search(r"Flag (--[\w.]+) must have a value other than None", text)
  if required:
    name = required[1][2:]
    given = [a for a in sys.argv[1:] if a.startswith(f"--{name}=")]
    if given:  # a recipe file whose get_config() returned None
      return (f"{given[-1]}: the recipe gave no config (its get_config() returned None: a "
              "missing `return c`?)")
    help_text = _help_text(flags.FLAGS[name]) if name in flags.FLAGS else ""
    return f"{required[1]} is required" + (f": {help_text}" if help_text else "")
  bad_value = re.fullmatch(r"flag (--[\w.]+)=(.*?): (.*)", text, re.DOTALL)
  if bad_value:
    flag, value, why = bad_value.groups()
    lines = [line for line in why.splitlines() if line.strip()]
    # A recipe whose get_config raises: ml_collections' message ends with the error.
    why = f"{lines[0]} {lines[-1]}" if lines[0].startswith("Error whilst parsing") else lines[0]
    if why.startswith("invalid literal for int()"):
      why = "not an integer"
    elif why.startswith("('Non-boolean argument to boolean flag'"):
      why = "not a boolean (true or false)"
    elif why.startswith("could not convert string to float"):
      why = "not a number"
    typed = re.search(r"field '(\w+)' \(reference\)\. (.*) is of original type <class '(\w+)'> "
                      r"and cannot be casted to type <class '(\w+)'>", why)
    if typed:  # a recipe's key set to a value of another type (ml_collections' words)
      key, given, kind, takes = typed.groups()
      at = re.findall(rf'File "{re.escape(value.split(":")[0])}", line (\d+)', text)
      why = (f"{'line ' + at[-1] if at else 'it'} sets {key} to "
             f"{repr(given) if kind == 'str' else given}, a {kind}; {key} takes "
             f"{'an' if takes[0] in 'aeiou' else 'a'} {takes}")
    return f"{flag}={value}: {why}"
  if isinstance(error, flags.UnrecognizedFlagError):
    name = error.flagname
    if name.removeprefix("config.") in NANOGPT_ONLY:
      return f"--{name}: no such flag; {NANOGPT_ONLY[name.removeprefix('config.')]}"
    keys = list(defaults.get_config()) if "config" in flags.FLAGS else []
    if name in keys:  # nanoGPT's --max_iters=N
      return f"--{name}: no such flag; a config key is set as --config.{name}"
    if name.removeprefix("config.") in keys:  # where --config=FILE is optional (bench)
      return f"--{name}: a key of the recipe that --config=FILE names, and none is named"
    # The command's own flags and config keys, not absl's, grain's or orbax's flags.
    spelled = {key: f"config.{key}" for key in keys}
    spelled.update((flag.name, flag.name) for module, defined
                   in flags.FLAGS.flags_by_module_dict().items()
                   if module.startswith("jaxgpt") or module.endswith(".py") for flag in defined)
    near = difflib.get_close_matches(name, spelled, n=1)
    hint = f"; did you mean --{spelled[near[0]]}?" if near else ""
    return f"--{name}: no such flag{hint} (--help lists them)"
  return text.splitlines()[0]


def _innermost(error: Exception) -> tuple[Exception, list[str]]:
  """The error ml_collections wrapped (nested twice) and its message's lines, stripped, less
  the whole config a locked one lists after a key it refuses (2,000 characters)."""
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  text = re.sub(r" Other fields present: .*", "", text)
  return error, [line.strip() for line in text.splitlines() if line.strip()]


def _guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  def guarded(argv: list[str]) -> None:
    _quiet_log()
    try:
      main(argv)
    except preemption.StopBeforeTraining as e:
      logging.warning("%s", e)
      _exit(0)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit's flush
      sys.exit(141)  # as a process ended by SIGPIPE
    except KeyboardInterrupt:  # a second Ctrl-C
      if os.environ.get(TRACEBACK_ENV):
        raise
      print("interrupted (Ctrl-C)", file=sys.stderr)
      _exit(130, interrupted=True)
    except (UserError, OSError) as e:
      # config_flags loads --config=FILE lazily: a missing or broken recipe file (or a folder,
      # or one it may not read) surfaces as an OSError on first use, its cause on the last line.
      recipe = isinstance(e, OSError) and any(
          says in str(e) for says in ("Failed loading config file", _LOAD_FAILED))
      full = isinstance(e, OSError) and e.errno in FULL  # the output's disk, stdout's included
      if os.environ.get(TRACEBACK_ENV) or not (recipe or full or isinstance(e, UserError)):
        raise
      if recipe:
        message = _not_loaded(str(e).strip().splitlines()[-1], sys.argv)
      elif full:
        message = f"error: writing {e.filename or 'the output'} failed ({e.strerror})"
      else:
        message = f"error: {e}"
    except RuntimeError as e:  # XLA's, where the work is too large for the device: no bug
      if os.environ.get(TRACEBACK_ENV) or not _out_of_memory(e):
        raise
      message = (f"error: out of device memory ({first_line(e)}); a smaller batch may fit: a run's "
                 "batch_size (with more gradient_accumulation_steps; `python -m jaxgpt.plan` "
                 "says what fits), sample's or evaluate's --batch_rows")
    else:
      _exit(0)
    # Out of the except clause, the error's traceback is gone, and with it what its frames held:
    # Grain's batches in shared memory, freed now rather than warned of at exit as "leaked".
    gc.collect()
    _exit(message)
  return guarded


def _out_of_memory(error: RuntimeError) -> bool:
  jax = sys.modules.get("jax")  # not imported for this: some commands never load it
  return (jax is not None and isinstance(error, jax.errors.JaxRuntimeError)
          and str(error).startswith("RESOURCE_EXHAUSTED"))


class _ShortFormatter(pylogging.Formatter):
  def format(self, record: pylogging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = "" if record.levelno == pylogging.INFO else f"{record.levelname}: "
    return f"{stamp} {level}{record.getMessage()}"


def _library_quiet(record: pylogging.LogRecord) -> bool:
  """Ours pass; of the libraries', warnings alone, without tracebacks, and never Orbax's (or
  its asyncio tasks'): the run itself says what failed in a save or a restore."""
  if record.pathname.startswith(_PACKAGE_DIR) or record.pathname == _LAUNCH:
    return True
  record.exc_info, record.exc_text = None, None
  orbax = "/orbax/" in record.pathname or record.name == "asyncio"
  return record.levelno >= pylogging.WARNING and not orbax


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
  """Drops what Orbax leaves behind a failed save or read, which the run's own line reports:
  the 'Event loop is closed' storage callbacks raise once a failed save has ended its event
  loop, and the errors of its reading coroutines closed after one array failed to read
  (dozens, each with a traceback and a page of storage spec); a stop's StopAtEnd raised where
  Python drops it. A stop that is to end the command (a Ctrl-C, SIGTERM, a stop before
  training) is sent again (`preemption.send_again`), without a traceback. Hands every other
  to Python's own hook."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  if isinstance(error, KeyboardInterrupt):  # raised in JAX's gc callback, which drops it
    preemption.send_again(getattr(error, "signum", signal.SIGINT))
    return
  if isinstance(error, preemption.StopAtEnd):  # raised in JAX's gc callback, which drops it
    return  # the closing sample goes on; the run's line says it ran whole
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and "/orbax/" in code.co_filename:
    return
  sys.__unraisablehook__(unraisable)


def _quiet_log() -> None:
  if logging.get_verbosity() >= logging.DEBUG:  # asked for everything
    return
  handler = logging.get_absl_handler()
  handler.setFormatter(_ShortFormatter())
  handler.addFilter(_library_quiet)
  # Orbax's reading coroutines left unawaited by a failed read say so as they go (`_unraisable`).
  warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)
  warnings.filterwarnings("ignore", "Enable tracemalloc", RuntimeWarning)
