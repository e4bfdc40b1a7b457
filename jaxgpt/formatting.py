"""Counts and durations as every log line and command spells them."""

from __future__ import annotations

import math

_SCALES = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))


def count(n: float, fmt: str = ".2f") -> str:
  """10485760000 -> '10.49B', 40560000 -> '40.56M', 999999 -> '1.00M', 512 -> '512'."""
  for i, (scale, suffix) in enumerate(_SCALES):
    if abs(n) >= scale:
      text = f"{n / scale:{fmt}}"
      if i and abs(float(text)) >= 1000:  # rounded up into the next scale
        scale, suffix = _SCALES[i - 1]
        text = f"{n / scale:{fmt}}"
      return text + suffix
  return f"{n:.0f}"


def parse_count(text: str) -> int:
  """'3.68B' -> 3680000000; '500M', '12K', '1e9', '10_000', plain integers: a count flag."""
  scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(text.strip()[-1:].upper(), 1)
  number = text.strip()[:-1] if scale != 1 else text.strip()
  try:
    return round(float(number.replace("_", "")) * scale)
  except (ValueError, OverflowError):  # 'inf' overflows round()
    raise ValueError(f"{text!r} is not a count (e.g. 3.68B, 500M, 10000000000)") from None


_YEAR = 365.25 * 24 * 3600


def duration(seconds: float) -> str:
  """20000 -> '5h33m', 125 -> '2m05s'; in years from one ('3.2 years', '1.6e+12 years');
  'never' where it is infinite (a rate of ~0)."""
  if not math.isfinite(seconds):
    return "never"
  if seconds >= _YEAR:  # else as many digits of hours as the rate's exponent asks
    y = seconds / _YEAR
    years = f"{y:.2g}" if y < 10 else f"{y:,.0f}" if y < 1e6 else f"{y:.1e}"
    return f"{years} year" + ("" if years == "1" else "s")
  seconds = round(seconds)
  if seconds >= 3600:  # to the nearest minute: 5h59m55s is '6h00m', not '5h59m'
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


def plural(n: int, word: str, words: str = "") -> str:
  """(1, 'shard') -> '1 shard', (2, 'shard') -> '2 shards', (3, 'batch', 'batches')."""
  return f"{n:,} {word if n == 1 else words or word + 's'}"
