"""The exception for what a user can cause and fix, as opposed to a bug."""


class UserError(Exception):
  """Its message names what is wrong and what to do; the CLIs print it as one line, exit 1."""
