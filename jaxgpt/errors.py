"""The exception for what a user can cause and fix, as opposed to a bug."""


class UserError(Exception):
  """Its message names what is wrong and what to do; the CLIs print it as one line, exit 1."""


def first_line(error: BaseException) -> str:
  """The first line of an exception's message, cut at 300 characters: a library's (a storage
  layer's, cuDNN's) can run to pages, and a user's error is one line."""
  return (str(error).splitlines() or [""])[0][:300]
