"""The exception for what a user can cause and fix, as opposed to a bug."""


class UserError(Exception):
  """A condition the user can fix: a file, a key, a value, a busy or damaged run directory.

  Its message names what is wrong and what to do. The CLIs print it as one
  line on stderr and exit 1, without a traceback (tracebacks are for bugs).
  """
