"""A run's numbers at a glance: the loss table, best val, throughput, and a PNG of the curves.

`python -m jaxgpt.report --out_dir=runs/x [--out_dir=runs/y ...] [--logx] [--png=PATH]`
reads each run's metrics.jsonl, prints its evaluations and throughput, and
draws train and val loss against tokens, one colour per run, with the
learning rate on a second axis, into report.png of the first out_dir.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from absl import app, flags
from matplotlib import ticker

from jaxgpt import cli, run_dir, units

Run = run_dir.Records
FIGSIZE_IN, DPI = (10, 6), 100  # report.png is 1000 x 600 pixels
CROP_FRACTION = 0.02  # on a linear x axis, losses of the first 2% of tokens may run off the top


def load(out_dir: str) -> Run:
  return run_dir.RunDir(out_dir).read_metrics()


def summary(name: str, run: Run) -> str:
  """The evaluations as a table, the best val loss, and the median throughput and MFU."""
  lines = [name]
  evals = run["eval"]
  if evals:
    lines.append(f"{'step':>8} {'tokens':>9} {'train loss':>11} {'val loss':>9} {'lr':>9}")
    lines += [f"{r['iter']:>8,} {units.count(r['tokens']):>9} {r['train_loss']:>11.4f} "
              f"{r['val_loss']:>9.4f} {r['lr']:>9.2e}" for r in evals]
    best = min(evals, key=lambda r: r["val_loss"])
    lines.append(f"best val loss {best['val_loss']:.4f} at step {best['iter']:,} "
                 f"({units.count(best['tokens'])} tokens)")
  else:
    lines.append("no evaluation yet")
  m = run_dir.median_throughput(run["train"])
  if m["tokens_per_sec"] is None:
    lines.append("no train logs yet")
  else:
    mfu = "n/a (peak FLOP/s unknown)" if m["mfu"] is None else f"{m['mfu']:.1%}"
    lines.append(f"throughput: median {m['tokens_per_sec']:,.0f} tok/s, "
                 f"{m['ms_per_iter']:,.1f} ms/iter, MFU {mfu} "
                 f"(over {max(len(run['train']) - 1, 1)} train logs, the first skipped)")
  return "\n".join(lines)


def plot(runs: dict[str, Run], path: str, *, logx: bool = False) -> None:
  """Train (thin) and val (markers) loss against tokens, LR dotted on the right axis."""
  fig, ax = plt.subplots(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
  ax_lr = ax.twinx()
  handles = []
  keep = (lambda t: t > 0) if logx else (lambda t: True)
  top, bottom = 0.0, math.inf
  for i, (name, run) in enumerate(runs.items()):
    color = f"C{i}"
    train = [(r["tokens"], r["loss"]) for r in run["train"] if keep(r["tokens"])]
    evals = [r for r in run["eval"] if keep(r["tokens"])]
    if train:
      handles += ax.plot(*zip(*train), color=color, lw=1, alpha=0.5, label=f"{name} train")
    if evals:
      handles += ax.plot([r["tokens"] for r in evals], [r["val_loss"] for r in evals],
                         color=color, lw=2, marker="o", ms=3, label=f"{name} val")
    lr = [(r["tokens"], r["lr"]) for r in run["train"] if keep(r["tokens"])]
    if lr:
      handles += ax_lr.plot(*zip(*lr), color=color, lw=1, ls=":", label=f"{name} lr")
    # On a linear x axis the loss at initialisation (~ln vocab) would squash the rest:
    # the y axis ends at the highest loss after the first 2% of the run's tokens.
    points = train + [(r["tokens"], r["val_loss"]) for r in evals]
    end = max((t for t, _ in points), default=0)
    top = max([top] + [l for t, l in points if logx or t >= CROP_FRACTION * end])
    bottom = min([bottom] + [l for _, l in points])
  if logx:
    ax.set_xscale("log")
  else:
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: units.count(x, ".3g")))
  if top > bottom:
    pad = 0.05 * (top - bottom)
    ax.set_ylim(bottom - pad, top + pad)
  ax.set_xlabel("tokens")
  ax.set_ylabel("loss")
  ax_lr.set_ylabel("learning rate (dotted)")
  ax_lr.set_ylim(bottom=0)
  ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
  ax.grid(True, alpha=0.3)
  # Legend columns fill top-down: one column per run (train, val, lr), or one row for one run.
  fig.legend(handles=handles, loc="outside lower center", fontsize=9,
             ncol=min(len(runs), 4) if len(runs) > 1 else 3)
  ax.set_title("loss against tokens" + (" (log scale)" if logx else ""))
  fig.savefig(path)
  plt.close(fig)


def _names(out_dirs: list[str]) -> list[str]:
  """Each run's directory name, or its path where two share a name."""
  names = [os.path.basename(os.path.normpath(d)) for d in out_dirs]
  return [n if names.count(n) == 1 else os.path.normpath(d) for n, d in zip(names, out_dirs)]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  runs = {name: load(d) for name, d in zip(_names(FLAGS.out_dir), FLAGS.out_dir)}
  print("\n\n".join(summary(name, run) for name, run in runs.items()))
  path = FLAGS.png or run_dir.RunDir(FLAGS.out_dir[0]).report_path
  plot(runs, path, logx=FLAGS.logx)
  print(f"\nwrote {path}")


def _define_flags() -> None:
  flags.DEFINE_multi_string("out_dir", None, "A run directory holding metrics.jsonl; repeat the "
                            "flag to compare runs.")
  flags.DEFINE_bool("logx", False, "Tokens on a log scale.")
  flags.DEFINE_string("png", None, "Where to write the plot (default: report.png in the first "
                      "out_dir).")
  flags.mark_flags_as_required(["out_dir"])


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
