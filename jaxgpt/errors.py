"""The exception for what a user can cause and fix, as opposed to a bug."""

import errno
import json
import os
from typing import Any

FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota


class UserError(Exception):
  """Its message names what is wrong and what to do; the CLIs print it as one line, exit 1."""


def first_line(error: BaseException) -> str:
  """The first line of an exception's message, cut at 300 characters: a library's (a storage
  layer's, cuDNN's) can run to pages, and a user's error is one line."""
  return (str(error).splitlines() or [""])[0][:300]


def read_json_object(path: str, what: str, fix: str = "") -> dict[str, Any] | None:
  """The JSON object a run or dataset file holds; None where there is no such file. One that
  cannot be read, is not JSON or holds no object (an edit gone wrong) is a UserError naming
  it, as `what` it should be, and ending with `fix`."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (ValueError, RecursionError) as e:  # RecursionError: nested past Python's stack
    raise UserError(f"{path}: not JSON ({e}){fix}") from None
  except OSError as e:  # another user's file, say
    raise UserError(f"{path}: cannot read it ({e.strerror}){fix}") from None
  if not isinstance(value, dict):
    raise UserError(f"{path}: not {what} (a JSON object){fix}")
  return value


def missing_folders(path: str) -> list[str]:
  """The folders of `path` not there yet, absolute and innermost first: those that
  os.makedirs(path) makes, for a step that fails to remove again."""
  made, folder = [], os.path.abspath(path)
  while not os.path.isdir(folder):
    made.append(folder)
    folder = os.path.dirname(folder)
  return made


def same_file(fd: int, path: str) -> bool:
  """Whether `path` still names the file open as `fd`: a lock file removed between its open
  and its lock (by a holder taking back what it made) is no lock, and is opened again."""
  try:
    named = os.stat(path)
  except FileNotFoundError:
    return False
  held = os.fstat(fd)
  return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def folder_problem(path: str, error: OSError) -> str:
  """Why a folder cannot be made at `path`, where `error` says only "File exists"."""
  path = path.rstrip(os.sep) or path  # 'file/' does not exist; 'file' does
  if os.path.islink(path) and not os.path.exists(path):
    return f"a symlink to {os.readlink(path)}, which does not exist"
  if os.path.exists(path) and not os.path.isdir(path):
    return "a file, not a folder"
  return error.strerror or str(error)
