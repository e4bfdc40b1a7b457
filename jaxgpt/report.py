"""A run's numbers at a glance: the loss table, best val, throughput, and a PNG of the curves.

`python -m jaxgpt.report --out_dir=runs/x [--out_dir=runs/y ...] [--logx] [--out=PATH]`
reads each run's metrics.jsonl, prints its evaluations, task scores and
throughput, and draws train and val loss against tokens, one colour per run,
with the learning rate on a second axis, into report.png of the first
out_dir; where a run scored HellaSwag (eval_tasks), a second panel below
draws its acc_norm against tokens beside GPT-2 124M's and chance.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import statistics
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import flags

from jaxgpt import cli, defaults, formatting, optim, run_dir
from jaxgpt.errors import UserError, first_line
from jaxgpt.evals import hellaswag

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

Run = run_dir.Records
FIGSIZE_IN, DPI = (10, 6), 100  # report.png is 1000 x 600 pixels
FIGSIZE_TASKS_IN = (10, 9)  # 1000 x 900 with the HellaSwag panel
HELLASWAG = "hellaswag_acc_norm"
CROP_FRACTION = 0.02  # on a linear x axis, train losses of the first 2% of tokens may run off the top
LR_POINTS = 2001  # the learning-rate curve's iterations, and warmup's (all where fewer)


# The numbers each event's records must hold; the throughput ones may be null (not measured:
# mfu on a device of unknown peak).
FIGURES = {"train": ("tokens", "loss", "lr"), "eval": ("tokens", "train_loss", "val_loss", "lr"),
           "tasks": ("tokens",)}
THROUGHPUT = ("tokens_per_sec", "ms_per_iter", "mfu")
DEVICES = "devices"  # on each start's first train log (train.py): "8 x NVIDIA H100 80GB HBM3"


def load(out_dir: str, figures: dict[str, tuple[str, ...]] = FIGURES) -> Run:
  """A run's records, with a number wherever the report reads one: a null loss or score is
  NaN, +-1.7976931348623157e308 is +-inf (jq 1.6 writes NaN and Infinity so) and an integer
  figure past 2**53 a float (jq 1.6 drops the point of one from 1e17 up); a missing
  figure (of each event's `figures`: plan's throughput needs fewer) or a non-numeric one is
  an error naming the record."""
  rundir = run_dir.RunDir(out_dir)
  run = rundir.read_metrics()
  for event in FIGURES:
    needed = figures.get(event, ())
    for r in run[event]:
      where = f"{rundir.metrics_path}: the {event} record of iter {r['iter']}"
      missing = [key for key in needed if key not in r]
      if missing:
        raise UserError(f"{where} has no {', '.join(missing)}")
      for key, value in r.items():
        if key in ("event", DEVICES) or (value is None and key in THROUGHPUT):
          continue
        if value is None and key != "tokens":
          r[key] = math.nan
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
          raise UserError(f"{where} has {key}={value!r}, not a number")
        elif abs(value) == sys.float_info.max:
          r[key] = math.copysign(math.inf, value)
        elif isinstance(value, int) and abs(value) >= 2**53 and key not in ("iter", "tokens"):
          r[key] = float(value)  # jq 1.6 writes a float from 1e17 up as an integer
  return run


def last_layout(train_records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
  """The train logs of the run's last layout on the last start's devices, and its tokens per
  iteration (from the logs' token counts): all of them where neither changed; after a resume
  that changed either (on more devices, or other cards), those from the resume's first log
  on, which times one step as a run's first does; none while that log is the last."""
  first, _ = layout_start(train_records)
  per_iter = _rates(train_records)[1]
  records = [] if first is None else train_records[first:]
  start = _devices_start(records)
  return ([] if start and start == len(records) - 1 else records[start:]), per_iter[-1]


def _devices_start(records: list[dict[str, Any]]) -> int:
  """Where in `records` the starts on the last start's devices begin, after the last start on
  others (another card runs at another rate, at the same tokens per iteration): 0 where there
  was none, or no log names its devices (a run from before train.py named them)."""
  named = [i for i, r in enumerate(records) if DEVICES in r]
  others = [i for i in named if records[i][DEVICES] != records[named[-1]][DEVICES]]
  return min(i for i in named if i > others[-1]) if others else 0


def layout_start(train_records: list[dict[str, Any]]) -> tuple[int | None, int]:
  """Where the run's last layout starts: the index of the resume's first train log on it (0:
  the layout never changed; None while that log is the last) and the iteration resumed at.

  That log's count spans both layouts where iterations before the resume share its interval
  (log_interval > 1); where none does (log_interval=1, or a resume right after a log) the
  log before it is the old layout's alone, and the resume's iteration follows it.
  """
  points, per_iter = _rates(train_records)
  first = len(per_iter) - 1
  while first > 0 and per_iter[first - 1] == per_iter[-1]:
    first -= 1
  if first == 0:
    return 0, 0
  (i0, t0), (i1, t1) = points[first - 1], points[first]  # the interval of the log before
  old = per_iter[first - 2] if first > 1 else per_iter[first - 1]
  if i1 - i0 > 1 and old != per_iter[first - 1]:  # it spans both: the resume's first log
    new = per_iter[-1]
    k = (t1 - t0 - (i1 - i0) * new) / (old - new) if old != new else 0  # its old layout's
    return first - 1, min(max(round(i0 + 1 + k), i0 + 1), i1)
  return (None if first == len(per_iter) - 1 else first), i1 + 1


def _rates(train_records: list[dict[str, Any]]) -> tuple[list[tuple[int, int]], list[float]]:
  """The logs' (iteration, tokens) after the start's (-1, 0), and the tokens per iteration
  over each log's interval."""
  points = [(-1, 0)] + [(r["iter"], r["tokens"]) for r in train_records]
  return points, [(t1 - t0) / (i1 - i0) for (i0, t0), (i1, t1) in itertools.pairwise(points)]


def median_throughput(train_records: list[dict[str, Any]]) -> dict[str, float | None]:
  """Median tokens_per_sec, ms_per_iter and mfu of train logs, skipping the first and every
  start's first (which names its devices), its time holding the compile; all where none is
  left.

  Of an even count, one middle log's, not the mean of two: the low rates and the high time
  are the same log's (a time is its rates' reciprocal), so the figures name one speed."""
  steady = [r for r in train_records[1:] if DEVICES not in r] or train_records
  medians: dict[str, float | None] = {}
  for key in THROUGHPUT:
    values = [r[key] for r in steady if r.get(key) is not None]
    middle = statistics.median_high if key == "ms_per_iter" else statistics.median_low
    medians[key] = middle(values) if values else None
  return medians


def summary(name: str, run: Run, saved: list[int] | None = None) -> str:
  """The evaluations as a table, the best val loss, and the median throughput and MFU. Where
  `saved`, the run's checkpoints, lack the best step (its save in flight, or killed, or the
  step 0 a run never saves), that is said: `--step` would not find it."""
  lines = [name]
  evals = run["eval"]
  if evals:
    lines.append(f"{'step':>8} {'tokens':>9} {'train loss':>11} {'val loss':>9} {'lr':>9}")
    lines += [f"{r['iter']:>8,} {formatting.count(r['tokens']):>9} {r['train_loss']:>11.4f} "
              f"{r['val_loss']:>9.4f} {r['lr']:>9.2e}" for r in evals]
    finite = [r for r in evals if math.isfinite(r["val_loss"])]
    best = min(finite, key=lambda r: r["val_loss"]) if finite else None
    lines.append("no finite val loss" if best is None else
                 f"best val loss {best['val_loss']:.4f} at step {best['iter']:,} "
                 f"({formatting.count(best['tokens'])} tokens)" + _unsaved(best["iter"], saved))
  else:
    lines.append("no evaluation yet")
  lines += _tasks_table(run["tasks"])
  lines.append(_throughput(run["train"]))
  last = run["train"][-1] if run["train"] else {}  # only train logs carry the count so far
  if last.get("skipped_steps"):
    lines.append(f"{formatting.plural(last['skipped_steps'], 'iteration')} skipped for a "
                 f"non-finite loss or gradient (skip_nonfinite) as of iter {last['iter']:,}, the "
                 "last train log")
  return "\n".join(lines)


def _unsaved(step: int, saved: list[int] | None) -> str:
  """A note for a best `step` that none of the run's checkpoints (`saved`) holds."""
  if saved is None or step in saved:
    return ""
  held = f"it holds steps {', '.join(f'{s:,}' for s in saved)}" if saved else "it holds none"
  return f"; no checkpoint of it ({held})"


def _throughput(train: list[dict[str, Any]]) -> str:
  """The median throughput of the run's last layout and devices (a resume on more devices or
  other cards runs at another rate): the logs since that resume, each start's first skipped
  (its time holds the compile)."""
  if not train:
    return "no train logs yet"
  first, resumed = layout_start(train)
  records, _ = last_layout(train)
  if not records:  # only the last resume's first log, which holds the compile
    return (f"throughput: not measured yet on the {'layout' if first is None else 'devices'} of "
            "the last resume")
  other_devices = records[0] is not train[first]
  m = median_throughput(records)
  measured = [form.format(m[key]) for key, form in (
      ("tokens_per_sec", "{:,.0f} tok/s"), ("ms_per_iter", "{:,.1f} ms/iter"),
      ("mfu", "MFU {:.1%}")) if m[key] is not None]  # a hand-made file may lack any of them
  if not measured:
    return "throughput: not measured"
  n, firsts = len(records), 1 + sum(DEVICES in r for r in records[1:])
  skipped = "the first" if firsts == 1 else f"the first of each of {firsts} starts"
  over = (f"over {formatting.plural(n - firsts, 'train log')}, {skipped} skipped" if n > firsts
          else "over 1 train log, the first: one step" if n == 1
          else f"over {n} train logs, each a start's first, with its compile")  # all it had
  if other_devices:
    over += (f"; since the resume on {records[0][DEVICES]}, first logged at iter "
             f"{records[0]['iter']:,}")
  elif n < len(train):
    over += f"; since the resume at iter {resumed:,} on another layout"
  return f"throughput: median {', '.join(measured)} ({over})"


def _tasks_table(records: list[dict]) -> list[str]:
  """The task scores (eval_tasks) as a table; counts of examples and tokens left out."""
  if not records:
    return []
  keys = [k for k in dict.fromkeys(k for r in records for k in r)  # tasks a resume dropped too
          if k not in ("event", "iter", "tokens") and not k.endswith(("_examples", "_tokens"))]
  cells = [[f"{r[k]:.4f}" if k in r else "-" for k in keys] for r in records]
  # As wide as the widest cell: a perplexity at step 0 is ~50,000, 10 characters.
  widths = [max(len(k), 8, *(len(row[j]) for row in cells)) for j, k in enumerate(keys)]
  lines = [f"{'step':>8} {'tokens':>9} " + " ".join(f"{k:>{w}}" for k, w in zip(keys, widths))]
  for r, row in zip(records, cells):
    lines.append(f"{r['iter']:>8,} {formatting.count(r['tokens']):>9} "
                 + " ".join(f"{cell:>{w}}" for cell, w in zip(row, widths)))
  if HELLASWAG in keys:
    lines.append(f"{HELLASWAG}: random guessing 0.25, GPT-2 124M "
                 f"{hellaswag.GPT2_124M_ACC_NORM}")
  return lines


def lr_by_tokens(run: Run, saved: dict[str, Any] | None) -> list[tuple[float, float]]:
  """The learning rate against tokens: every iteration's to max_iters, from the schedule in
  the run's config.json, at the tokens the records give (extended at their last rate); the
  logged rates up to the last that config.json's schedule does not give (a resume changed
  it), and only those where there is no config.json or too few records."""
  tokens_at = {0: 0, **{r["iter"]: r["tokens"] for r in run["eval"]}}  # before an iteration
  tokens_at.update({r["iter"] + 1: r["tokens"] for r in run["train"]})  # tokens after a step
  known_its, known_tokens = map(np.array, zip(*sorted(tokens_at.items())))
  # Where each record's iteration starts, in tokens: one np.interp over them all (one a record
  # made a 600,000-iteration run's report take a quarter of an hour).
  starts = lambda records: np.interp([r["iter"] for r in records], known_its, known_tokens).tolist()
  logged = list(zip(starts(run["train"]), [r["lr"] for r in run["train"]]))
  if saved is None or len(known_its) < 2:
    return logged
  config = defaults.with_defaults(saved)
  max_iters = config["max_iters"]
  try:  # a config.json edited by hand: the logged rates, as without one
    warmup_end = min(max_iters, 2 * config["warmup_iters"] + 2)
    its = np.unique(np.concatenate([np.linspace(0, warmup_end, min(warmup_end + 1, LR_POINTS)),
                                    np.linspace(0, max_iters, LR_POINTS)]).round())
    schedule = optim.lr_schedule(defaults.view(optim.OptimConfig, config), np)
    lr = np.broadcast_to(schedule(its), its.shape)
  except (TypeError, ValueError):
    return logged
  per_iter = (known_tokens[-1] - known_tokens[-2]) / (known_its[-1] - known_its[-2])
  tokens = np.where(its <= known_its[-1], np.interp(its, known_its, known_tokens),
                    known_tokens[-1] + per_iter * (its - known_its[-1]))
  # Evaluations log the rate too: one after the last train log tells a resume's iteration.
  with_lr = [r for r in run["train"] + run["eval"] if "lr" in r]
  marked = sorted(zip(starts(with_lr), [r["iter"] for r in with_lr], [r["lr"] for r in with_lr]))
  marked_its = np.array([it for _, it, _ in marked])
  differs = ~np.isclose(schedule(marked_its), [rate for *_, rate in marked], rtol=1e-4)
  if differs.any():  # a resume changed the schedule: the rates before it are the logged ones
    last = marked_its[differs].max()
    after = its > last
    return ([(t, rate) for t, it, rate in marked if it <= last]
            + list(zip(tokens[after].tolist(), lr[after].tolist())))
  return list(zip(tokens.tolist(), lr.tolist()))


def loss_limits(points: list[tuple[float, float]], val_points: list[tuple[float, float]],
                logx: bool) -> tuple[float, float]:
  """The loss axis: every val point, the step-0 one included, and the train losses after
  the first 2% of the tokens on a linear x axis (before that they would squash the rest);
  a non-finite loss (a skipped step) is left off the axis, not a limit matplotlib refuses."""
  end = max((t for t, _ in points + val_points), default=0)
  shown = [l for t, l in points if logx or t >= CROP_FRACTION * end] + [l for _, l in val_points]
  shown = [l for l in shown if math.isfinite(l)]
  return min(shown, default=math.inf), max(shown, default=0.0)


def pyplot() -> types.ModuleType:
  """matplotlib's pyplot, drawing to files (Agg), imported where a plot is drawn: `plan`, which
  reads metrics here, needs none; without it, a plot is one line saying how to install it."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError as e:
    raise UserError(f"the plot needs matplotlib, which did not import ({first_line(e)}): "
                    "pip install matplotlib") from None
  return plt


def _alone(points: list[tuple[float, float]]) -> list[int]:
  """The finite points with no finite neighbour, which a line does not show: a run's one log,
  or one between skipped steps' losses (NaN or inf); a marker does."""
  finite = [False, *(math.isfinite(y) for _, y in points), False]
  return [i for i in range(len(points)) if finite[i + 1] and not (finite[i] or finite[i + 2])]


def plot(runs: dict[str, Run], path: str, *, logx: bool = False,
         configs: dict[str, dict[str, Any] | None] | None = None) -> None:
  """Train (thin) and val (markers) loss against tokens, LR dotted on the right axis.

  Below, where a run scored HellaSwag: its acc_norm against the same tokens.
  `configs` holds each run's config.json, for its learning rate to max_iters.
  """
  plt = pyplot()
  from matplotlib import ticker

  with_hellaswag = any(HELLASWAG in r for run in runs.values() for r in run["tasks"])
  if with_hellaswag:
    fig, (ax, ax_hs) = plt.subplots(2, 1, figsize=FIGSIZE_TASKS_IN, dpi=DPI, sharex=True,
                                    height_ratios=(2, 1), layout="constrained")
  else:
    fig, ax = plt.subplots(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
  ax_lr = ax.twinx()
  handles = []
  keep = (lambda t: t > 0) if logx else (lambda t: True)
  top, bottom = 0.0, math.inf
  for i, (name, run) in enumerate(runs.items()):
    color = f"C{i}"
    train = [(r["tokens"], r["loss"]) for r in run["train"] if keep(r["tokens"])]
    evals = [(r["tokens"], r["val_loss"]) for r in run["eval"] if keep(r["tokens"])]
    if train:
      alone = _alone(train)
      handles += ax.plot(*zip(*train), color=color, lw=1, alpha=0.5, label=f"{name} train",
                         marker="." if alone else None, markevery=alone)
    if evals:
      handles += ax.plot(*zip(*evals), color=color, lw=2, marker="o", ms=3,
                         label=f"{name} val")
    lr = [(t, x) for t, x in lr_by_tokens(run, (configs or {}).get(name)) if keep(t)]
    if lr:
      handles += ax_lr.plot(*zip(*lr), color=color, lw=1, ls=":", label=f"{name} lr",
                            marker="." if len(lr) == 1 else None)
    low, high = loss_limits(train, evals, logx)
    top, bottom = max(top, high), min(bottom, low)
  if logx:
    ax.set_xscale("log")
  else:
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(  # ticks about 0: a run's first eval
        lambda x, _: formatting.count(x, ".3g") if abs(x) >= 1000 else f"{x:.3g}"))
  if top > bottom:
    pad = 0.05 * (top - bottom)
    ax.set_ylim(bottom - pad, top + pad)
  if with_hellaswag:
    _plot_hellaswag(ax_hs, runs, keep)
  (ax_hs if with_hellaswag else ax).set_xlabel("tokens")
  ax.set_ylabel("loss")
  ax_lr.set_ylabel("learning rate (dotted)")
  ax_lr.set_ylim(bottom=0)
  ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
  ax.grid(True, alpha=0.3)
  # Legend columns fill top-down: one column per run (train, val, lr), or one row for one run.
  fig.legend(handles=handles, loc="outside lower center", fontsize=9,
             ncol=min(len(runs), 4) if len(runs) > 1 else 3)
  ax.set_title("loss against tokens" + (" (log scale)" if logx else ""))
  _save(fig, path)


def _save(fig: Figure, path: str) -> None:
  """Writes and closes the figure; a place or a kind it cannot be written to is the user's.
  Written whole before it replaces the plot there: a full disk or a Ctrl-C leaves that one."""
  target = os.path.realpath(path)  # a symlink's file, which savefig would write through it
  folder, name = os.path.split(target)
  kind = os.path.splitext(path)[1][1:].lower()  # as the user names it (`_checked_out`)
  written = os.path.join(folder, f".{name}.tmp{os.getpid()}")
  try:
    fig.savefig(written, format=kind)
    os.replace(written, target)
  except OSError as e:
    raise UserError(f"{path}: cannot write the plot there ({e.strerror}); pick another place "
                    "with --out") from None
  except RuntimeError as e:  # a kind that needs a program not installed: .pgf's LaTeX
    raise UserError(f"{path}: matplotlib cannot write it here ({e}); use .png, .pdf or "
                    ".svg") from None
  finally:
    pyplot().close(fig)
    with contextlib.suppress(OSError):  # gone where it replaced the plot
      os.remove(written)


def _plot_hellaswag(ax: Axes, runs: dict[str, Run], keep: Callable[[float], bool]) -> None:
  """acc_norm against tokens, a run's colour as above; GPT-2 124M's published figure dotted."""
  for i, (name, run) in enumerate(runs.items()):
    points = [(r["tokens"], r[HELLASWAG]) for r in run["tasks"]
              if HELLASWAG in r and keep(r["tokens"])]
    if points:
      ax.plot(*zip(*points), color=f"C{i}", lw=2, marker="o", ms=3, label=name)
  ax.axhline(hellaswag.GPT2_124M_ACC_NORM, color="k", ls=":", lw=1.5,
             label=f"GPT-2 124M ({hellaswag.GPT2_124M_ACC_NORM})")
  ax.axhline(0.25, color="0.6", ls=":", lw=1.5, label="random (0.25)")
  ax.set_ylabel("HellaSwag acc_norm")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right", fontsize=9)


def _names(out_dirs: list[str]) -> list[str]:
  """Each run's directory name (`.`'s too), or its path where two share a name; a byte that is
  not UTF-8 (a Latin-1 name) shown as U+FFFD, which matplotlib can draw."""
  shown = lambda path: os.fsencode(path).decode("utf-8", "replace")
  paths = [shown(os.path.normpath(d)) for d in out_dirs]
  names = [shown(os.path.basename(os.path.abspath(d))) or p for d, p in zip(out_dirs, paths)]
  return [n if names.count(n) == 1 else p for n, p in zip(names, paths)]


def _checked_out(path: str) -> str:
  """--out as the plot will be written (matplotlib adds .png to a name without a kind),
  refused before the summaries print where the plot cannot go there."""
  if os.path.isdir(path):
    raise UserError(f"--out={path}: a directory; give a file, e.g. "
                    f"{os.path.join(path, 'report.png')}")
  kind = os.path.splitext(path)[1][1:].lower()
  if not kind:
    path, kind = f"{path}.png", "png"
  pyplot()  # before the summaries print
  from matplotlib.backend_bases import FigureCanvasBase

  if kind not in FigureCanvasBase.get_supported_filetypes():
    raise UserError(f"--out={path}: matplotlib cannot write .{kind} files; use .png, .pdf or "
                    ".svg")
  if not os.path.isdir(os.path.dirname(path) or "."):
    raise UserError(f"--out={path}: no directory {os.path.dirname(path)}")
  return path


def main() -> None:
  FLAGS = flags.FLAGS
  path = (_checked_out(FLAGS.out) if FLAGS.out
          else run_dir.RunDir(FLAGS.out_dir[0]).report_path)
  named = dict(zip(_names(FLAGS.out_dir), FLAGS.out_dir))
  runs = {name: load(d) for name, d in named.items()}
  drawn = lambda r: r["tokens"] > 0 or not FLAGS.logx  # a log axis leaves token 0 out
  if not any(drawn(r) for run in runs.values() for r in run["train"] + run["eval"]):
    files = ", ".join(run_dir.RunDir(d).metrics_path for d in named.values())
    yet = " past token 0 yet, which --logx leaves out" if FLAGS.logx else " yet"
    raise UserError(f"{files}: no train log or evaluation{yet}; nothing to plot ({path} not "
                    "written)")
  print("\n\n".join(summary(name, run, run_dir.RunDir(named[name]).finished_steps())
                    for name, run in runs.items()))
  plot(runs, path, logx=FLAGS.logx,
       configs={name: run_dir.RunDir(d).read_config() for name, d in named.items()})
  print(f"\nwrote {path}")


def _define_flags() -> None:
  cli.define_path("out_dir", None, "A run directory holding metrics.jsonl; repeat the flag to "
                  "compare runs.", multi=True)
  flags.DEFINE_bool("logx", False, "Tokens on a log scale.")
  cli.define_path("out", None, "Where to write the plot (default: report.png in the first "
                  "out_dir).")
  flags.mark_flags_as_required(["out_dir"])


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
