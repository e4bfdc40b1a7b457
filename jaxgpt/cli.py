"""What every command line shares: one-line errors for what a user can fix, and a quiet log.

`cli.run(main)` replaces `absl.app.run(main)`, and every command follows it:
- flags are defined in the command's `_define_flags()`, called under
  `if __name__ == "__main__":`; a flag that has no default is marked with
  `flags.mark_flags_as_required`, and what a command writes is named `--out`;
- `main()` takes no arguments, or the one subcommand named in `subcommands`
  (`python -m jaxgpt.prepare fineweb ...`); anything else on the command line
  is an error;
- a usage mistake (a stray argument, a missing required flag, a value of the
  wrong type, an unknown flag or config key) and a `UserError` raised by the
  library are one `error:` line and exit code 1; JAXGPT_TRACEBACK=1 shows the
  traceback of the latter too; so is a recipe file that raises, naming its line;
- a stop before training (`preemption.StopBeforeTraining`) is one line and
  exit 0; a Ctrl-C that stops at once, "interrupted" and exit 130;
- the log shows jaxgpt's own lines and the libraries' warnings, each as
  `HH:MM:SS message`; `--verbosity=1` (or -v 1) shows everything, with
  absl's full prefix.
"""

from __future__ import annotations

import logging as pylogging
import os
import re
import sys
import textwrap
import time
import traceback
from collections.abc import Callable

from absl import app, flags, logging

from jaxgpt.errors import UserError
from jaxgpt.preemption import StopBeforeTraining

TRACEBACK_ENV = "JAXGPT_TRACEBACK"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LAUNCH = os.path.join(os.path.dirname(_PACKAGE_DIR), "launch.py")


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


def run(main: Callable[..., None], *, subcommands: tuple[str, ...] = (),
        more_help: Callable[[], str] | None = None) -> None:
  """Runs `main` as a command: main() or, with `subcommands`, main(subcommand).

  `--help` prints the command's docstring, its own flags and `more_help()`,
  and exits 0 (absl's exits 1 and heads each module with its file path).
  """
  sys.unraisablehook = _unraisable
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    print(_help(more_help))
    sys.exit(0)

  def with_arguments(argv: list[str]) -> None:
    words = argv[1:]
    if subcommands:
      if len(words) != 1 or words[0] not in subcommands:
        got = f" (got: {' '.join(words)})" if words else ""
        raise UserError(f"name one of {', '.join(subcommands)}{got}: "
                        f"python -m {_program()} {{{'|'.join(subcommands)}}} [flags]")
      main(words[0])
    elif words:
      raise UserError(f"unexpected argument(s): {' '.join(words)} (flags are --name=value)")
    else:
      main()

  app.run(_guarded(with_arguments), flags_parser=_parse_flags)


def _program() -> str:
  main_module = sys.modules.get("__main__")
  spec = getattr(main_module, "__spec__", None)
  return spec.name.removesuffix(".__main__") if spec else os.path.basename(sys.argv[0])


def _help(more_help: Callable[[], str] | None) -> str:
  doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
  seen, lines = set(), [doc, "", "flags:"]
  for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
    path = os.path.abspath(module) if module.endswith(".py") else ""
    if not (module.startswith("jaxgpt") or path.startswith(_PACKAGE_DIR) or path == _LAUNCH):
      continue
    for flag in sorted(module_flags, key=lambda f: f.name):
      if flag.name not in seen:
        seen.add(flag.name)
        lines.append(_flag_help(flag))
  lines.append("  --helpfull: every flag, the libraries' too")
  return "\n".join(lines + (["", more_help()] if more_help else []))


def _flag_help(flag: flags.Flag) -> str:
  name = f"[no]{flag.name}" if flag.boolean else flag.name
  text = re.sub(r";\s*repeat this option to specify a list of values$", "", flag.help)
  notes = ["repeatable"] if isinstance(flag, flags.MultiFlag) else []
  if any("must have a value other than None" in getattr(v, "message", "")
         for v in flag.validators):
    notes.append("required")
  elif flag.default not in (None, "", []):
    default = flag.default[0] if isinstance(flag, flags.MultiFlag) else flag.default
    notes.append(f"default {default!r}" if isinstance(default, str) else f"default {default}")
  line = f"--{name}: {text}" + (f" ({'; '.join(notes)})" if notes else "")
  return textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="      ")


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {_flag_error(e)}")
  except Exception as e:  # a --config.KEY, or a recipe file's own mistake
    line = _recipe_line(e, argv)
    if line is not None and not os.environ.get(TRACEBACK_ENV):
      sys.exit(f"error: --config: {line}: {type(e).__name__}: {_message(e)}")
    if isinstance(e, (AttributeError, KeyError, TypeError, ValueError, OSError)):
      sys.exit(f"error: {_config_error(e)}")
    raise


def _recipe_line(error: Exception, argv: list[str]) -> str | None:
  """'FILE, line N' in the --config recipe file where `error` was raised, if it was."""
  recipes = {os.path.abspath(a.split("=", 1)[1].split(":", 1)[0]) for a in argv
             if a.startswith("--config=")}
  if isinstance(error, SyntaxError):
    frames = [(error.filename or "", error.lineno)]
  else:
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(error.__traceback__)]
  lines = [f"{name}, line {n}" for name, n in frames if os.path.abspath(name) in recipes]
  return lines[-1] if lines else None


def _flag_error(error: flags.Error) -> str:
  """absl's message, as a user would say it."""
  text = str(error)
  required = re.search(r"Flag (--[\w.]+) must have a value other than None", text)
  if required:
    name = required[1][2:]
    help_text = flags.FLAGS[name].help if name in flags.FLAGS else ""
    return f"{required[1]} is required" + (f": {help_text}" if help_text else "")
  bad_value = re.fullmatch(r"flag (--[\w.]+)=(.*?): (.*)", text, re.DOTALL)
  if bad_value:
    flag, value, why = bad_value.groups()
    lines = [line for line in why.splitlines() if line.strip()]
    # A recipe whose get_config raises: ml_collections' message ends with the error.
    why = f"{lines[0]} {lines[-1]}" if lines[0].startswith("Error whilst parsing") else lines[0]
    if why.startswith("invalid literal for int()"):
      why = "not an integer"
    elif why.startswith("could not convert string to float"):
      why = "not a number"
    return f"{flag}={value}: {why}"
  unknown = re.fullmatch(r"Unknown command line flag '([\w.]+)'.*", text, re.DOTALL)
  if unknown:
    return f"--{unknown[1]}: no such flag (--help lists them)"
  return text.splitlines()[0]


def _innermost(error: Exception) -> tuple[Exception, str]:
  """The error ml_collections wrapped (nested twice) and its message: `'max_iter'\\nDid you
  mean ...`."""
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]
  return error, str(error.args[0]) if error.args else str(error)


def _message(error: Exception) -> str:
  """An error's message on one line: `max_iter Did you mean ...`."""
  text = _innermost(error)[1]
  return " ".join(line.strip().strip("'\"") for line in text.splitlines() if line.strip())


def _config_error(error: Exception) -> str:
  """ml_collections' message about a --config.KEY, as it means it."""
  error, text = _innermost(error)
  first, *rest = text.splitlines() or [""]
  key = first.strip("'\"")
  if isinstance(error, KeyError) and rest:
    return f"--config.{key}: no such config key. {' '.join(rest)}"
  return " ".join([first, *rest])


def _guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  def guarded(argv: list[str]) -> None:
    _quiet_log()
    try:
      main(argv)
    except StopBeforeTraining as e:
      logging.warning("%s", e)
    except KeyboardInterrupt:  # a second Ctrl-C, which stops at once
      if os.environ.get(TRACEBACK_ENV):
        raise
      print("interrupted (Ctrl-C)", file=sys.stderr)
      sys.exit(130)
    except (UserError, OSError) as e:
      # config_flags loads --config=FILE lazily: a missing or broken recipe file surfaces
      # as an OSError on first use.
      if os.environ.get(TRACEBACK_ENV) or not _is_user_error(e):
        raise
      sys.exit(f"error: {_recipe_error(e) if isinstance(e, OSError) else e}")
  return guarded


def _is_user_error(error: Exception) -> bool:
  return isinstance(error, UserError) or "Failed loading config file" in str(error)


def _recipe_error(error: OSError) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"--config: the recipe file could not be loaded: {lines[-1]}"


class _ShortFormatter(pylogging.Formatter):
  def format(self, record: pylogging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = "" if record.levelno == pylogging.INFO else f"{record.levelname}: "
    return f"{stamp} {level}{record.getMessage()}"


def _ours(record: pylogging.LogRecord) -> bool:
  return record.pathname.startswith(_PACKAGE_DIR) or record.pathname == _LAUNCH


def _library_quiet(record: pylogging.LogRecord) -> bool:
  """Libraries' narration (JAX's backend probing, Orbax's every save and read) is dropped.

  Their warnings stay, each as one line without a traceback, but Orbax's and
  those of the asyncio tasks it runs: a save or a restore that fails is
  reported by the run itself, in a line that says what failed and what to do.
  """
  if _ours(record):
    return True
  record.exc_info, record.exc_text = None, None
  orbax = "/orbax/" in record.pathname or record.name == "asyncio"
  return record.levelno >= pylogging.WARNING and not orbax


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
  """Drops the 'Event loop is closed' that storage callbacks raise once a failed save has
  ended Orbax's event loop (dozens, each with a traceback, around the run's own error line);
  hands every other to Python's own hook."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def _quiet_log() -> None:
  if logging.get_verbosity() >= logging.DEBUG:  # asked for everything
    return
  handler = logging.get_absl_handler()
  handler.setFormatter(_ShortFormatter())
  handler.addFilter(_library_quiet)
