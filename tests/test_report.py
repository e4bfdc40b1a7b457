"""report: reading metrics.jsonl (resumed and live runs), the table, the PNG, the CLI."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time

import matplotlib.image
import numpy as np
import pytest
from conftest import run_python

from jaxgpt import defaults, errors, optim, report, run_dir, sinks
from jaxgpt.errors import UserError

TOKENS_PER_ITER = 524_288


def write_run(out_dir, *, max_iters=2000, eval_interval=500, log_interval=100, scale=1.0,
              mfu=0.38) -> str:
  """A metrics.jsonl shaped like train.py's, with a loss falling from ln(50304)."""
  writer = sinks.MetricsWriter(run_dir.RunDir(str(out_dir)).metrics_path)
  loss = lambda it: 3.0 * scale + 7.8 * math.exp(-it / 150)
  lr = lambda it: 6e-4 * min(1.0, (it + 1) / 100)
  for it in range(max_iters + 1):
    if it % eval_interval == 0:
      writer.write({"event": "eval", "iter": it, "tokens": it * TOKENS_PER_ITER,
                    "train_loss": loss(it), "val_loss": loss(it) + 0.05, "lr": lr(it)})
    if it < max_iters and it % log_interval == 0:
      tok_s = 100_000.0 if it == 0 else 500_000.0
      writer.write({"event": "train", "iter": it, "tokens": (it + 1) * TOKENS_PER_ITER,
                    "loss": loss(it), "lr": lr(it), "grad_norm": 0.5,
                    "ms_per_iter": 1000 * TOKENS_PER_ITER / tok_s, "tokens_per_sec": tok_s,
                    "mfu": None if mfu is None else mfu * tok_s / 500_000})
  writer.close()
  return str(out_dir)


def test_table_best_val_and_throughput(tmp_path):
  run = report.load(write_run(tmp_path))
  text = report.summary("x", run)
  lines = text.splitlines()
  assert lines[1].split() == ["step", "tokens", "train", "loss", "val", "loss", "lr"]
  assert lines[2].split() == ["0", "0", "10.8000", "10.8500", "6.00e-06"]
  assert lines[4].split()[:2] == ["1,000", "524.29M"]
  assert len([l for l in lines if l.split()[0].replace(",", "").isdigit()]) == 5  # evals 0..2000
  assert "best val loss 3.0500 at step 2,000 (1.05B tokens)" in text
  # The first log timed one step at 100k tok/s; it is skipped.
  assert "median 500,000 tok/s, 1,048.6 ms/iter, MFU 38.0%" in text


def test_unknown_mfu_is_left_out_and_an_empty_run_says_so(tmp_path):
  text = report.summary("x", report.load(write_run(tmp_path, mfu=None)))
  assert "ms/iter (over" in text and "MFU" not in text  # the run's log said why, once
  (tmp_path / "empty").mkdir()
  open(tmp_path / "empty" / "metrics.jsonl", "w").close()
  text = report.summary("empty", report.load(str(tmp_path / "empty")))
  assert "no evaluation yet" in text and "no train logs yet" in text
  run = report.load(write_run(tmp_path / "hand-made"))  # figures another tool left out
  for r in run["train"]:
    r["ms_per_iter"] = None
  assert "throughput: median 500,000 tok/s, MFU 38.0% (over" in report.summary("h", run)
  for r in run["train"]:
    r["tokens_per_sec"] = r["mfu"] = None
  assert "throughput: not measured" in report.summary("h", run)


def test_throughput_is_the_last_layout_s_after_a_resume_on_more_devices(tmp_path):
  """20 logs on 1 device at 10k tok/s, then a resume at iter 200 on 8 at 80k: the run goes at
  80k now (as plan reads it), not at the median of both layouts, which the longer one wins."""
  writer = sinks.MetricsWriter(run_dir.RunDir(str(tmp_path)).metrics_path)
  for it, per_iter, tok_s in ([(it, 8192, 10_000.0) for it in range(0, 200, 10)] +
                              [(it, 65_536, 80_000.0) for it in range(200, 300, 10)]):
    tokens = 200 * 8192 + (it - 199) * per_iter if it >= 200 else (it + 1) * per_iter
    writer.write({"event": "train", "iter": it, "tokens": tokens, "loss": 3.0, "lr": 1e-3,
                  "ms_per_iter": 1000 * per_iter / tok_s, "tokens_per_sec": tok_s,
                  "mfu": 0.3})
  writer.close()
  run = report.load(str(tmp_path))
  assert report.summary("x", run).splitlines()[-1] == (
      "throughput: median 80,000 tok/s, 819.2 ms/iter, MFU 30.0% (over 9 train logs, the first "
      "skipped; since the resume at iter 200 on another layout)")
  logs = run["train"]
  run["train"] = logs[:22]  # the resume's first log, which spans both layouts, and one more
  assert report.summary("x", run).splitlines()[-1] == (
      "throughput: median 80,000 tok/s, 819.2 ms/iter, MFU 30.0% (over 1 train log, the first "
      "skipped; since the resume at iter 200 on another layout)")
  run["train"] = logs[:21]  # the resume's first log alone
  assert report.summary("x", run).splitlines()[-1] == (
      "throughput: not measured yet on the layout of the last resume")
  run["train"] = [logs[0], logs[20]]  # one log before the resume (a run cut short), one after
  assert report.summary("x", run).splitlines()[-1] == (
      "throughput: not measured yet on the layout of the last resume")


def _resumed_logs(log_interval: int, resumed_at: int, end: int) -> list[dict]:
  """Train logs as train.py writes them: 8,192 tokens per iteration, then 65,536 from a resume
  at `resumed_at`; the resume's first log (compiling) at 1,000 tok/s, the others steady."""
  tokens = lambda it: (min(it, resumed_at) * 8192 + max(it - resumed_at, 0) * 65_536)
  logs, first_after = [], True
  for it in range(0, end, log_interval):
    new = it >= resumed_at
    tok_s = 1_000.0 if new and first_after else 80_000.0 if new else 10_000.0
    first_after = first_after and not new
    logs.append({"event": "train", "iter": it, "tokens": tokens(it + 1), "loss": 3.0,
                 "lr": 1e-3, "ms_per_iter": 1.0, "tokens_per_sec": tok_s, "mfu": None})
  return logs


@pytest.mark.parametrize("log_interval,resumed_at,label", [
    (1, 200, 200), (10, 201, 201), (10, 205, 205), (10, 200, 200)])
def test_the_resume_on_another_layout_is_named_at_its_iteration(log_interval, resumed_at,
                                                                 label):
  """With log_interval=1 (or a resume right after a log) no log spans both layouts: the log
  before the resume's first is the old layout's, not the resume's, and the resume's first
  (which times its compile) is the one skipped."""
  logs = _resumed_logs(log_interval, resumed_at, 300)
  line = report.summary("x", {"train": logs, "eval": [], "tasks": []}).splitlines()[-1]
  assert line.startswith("throughput: median 80,000 tok/s"), line
  assert line.endswith(f"since the resume at iter {label} on another layout)"), line
  records, per_iter = report.last_layout(logs)
  assert records[0]["tokens_per_sec"] == 1_000.0 and per_iter == 65_536


def test_a_resumed_run_keeps_the_records_that_continued(tmp_path):
  run = run_dir.RunDir(str(tmp_path))
  writer = sinks.MetricsWriter(run.metrics_path)
  for it in (0, 10, 20, 30):  # crashed after iter 30; resumed from the checkpoint at 20
    writer.write({"event": "train", "iter": it, "loss": 1.0})
  for it in (20, 30, 40):
    writer.write({"event": "train", "iter": it, "loss": 2.0})
  writer.close()
  train_logs = run.read_metrics()["train"]
  assert [(r["iter"], r["loss"]) for r in train_logs] == [(0, 1.0), (10, 1.0), (20, 2.0),
                                                          (30, 2.0), (40, 2.0)]


EVAL_0 = '{"event": "eval", "iter": 0, "tokens": 0, "train_loss": 3.1, "val_loss": 3.0, "lr": 0.0}'


def test_a_line_being_written_is_skipped_and_a_bad_one_named(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(EVAL_0 + '\n{"event": "tra')
  assert len(report.load(str(tmp_path))["eval"]) == 1
  path.write_text(EVAL_0 + "\n\n")  # an edit's blank line
  assert len(report.load(str(tmp_path))["eval"]) == 1
  path.write_text('{"event": "eval", "iter": 0}\nnot json\n')
  with pytest.raises(UserError, match=r"metrics.jsonl:2: not a metrics record"):
    report.load(str(tmp_path))
  for bad in (b'{"event": "eval", "iter": "x"}\n', b'\xe9t\xe9\n',  # a record, the bytes
              b'{"event": "eval", "iter": -1}\n', b'{"event": "eval", "iter": %d}\n' % 2**63,
              b'{"event": "eval", "iter": true}\n'):
    path.write_bytes(bad)
    with pytest.raises(UserError, match=r"metrics.jsonl:1: not a metrics record"):
      report.load(str(tmp_path))
  with pytest.raises(UserError, match="nowhere"):
    report.load(str(tmp_path / "nowhere"))


def test_a_null_loss_is_nan_and_a_figure_that_is_no_number_is_named(tmp_path):
  """jq 1.6 writes a skipped step's NaN loss as null: the report reads it as NaN. A null mfu
  is a device of unknown peak; a figure missing or not a number is the file's error."""
  path = tmp_path / "metrics.jsonl"
  train = ('{"event": "train", "iter": 0, "tokens": 8, "loss": null, "lr": 1e-4, '
           '"grad_norm": null, "ms_per_iter": 2.0, "tokens_per_sec": 4.0, "mfu": null}')
  path.write_text(f'{EVAL_0.replace("3.0", "null")}\n{train}\n')
  run = report.load(str(tmp_path))
  assert math.isnan(run["train"][0]["loss"]) and math.isnan(run["eval"][0]["val_loss"])
  assert run["train"][0]["mfu"] is None
  assert "no finite val loss" in report.summary("x", run)
  for bad, says in ((train.replace('"lr": 1e-4, ', ""), "has no lr"),
                    (train.replace('"tokens": 8', '"tokens": null'), "has tokens=None, not a"),
                    (train.replace("2.0", '"2 ms"'), "has ms_per_iter='2 ms', not a number")):
    path.write_text(bad + "\n")
    with pytest.raises(UserError, match=f"metrics.jsonl: the train record of iter 0 {says}"):
      report.load(str(tmp_path))


def test_an_infinite_loss_through_jq_is_infinite_again(tmp_path):
  """jq 1.6 writes Infinity as the largest double: read as inf, it stays off the loss axis
  (as the largest double, the axis' padding overflowed and matplotlib refused to draw)."""
  out_dir = write_run(tmp_path / "a", max_iters=1000)
  path = tmp_path / "a" / "metrics.jsonl"
  records = [json.loads(line) for line in path.read_text().splitlines()]
  records[-2]["loss"], records[-1]["val_loss"] = 1.7976931348623157e308, -1.7976931348623157e308
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  run = report.load(out_dir)
  assert run["train"][-1]["loss"] == math.inf and run["eval"][-1]["val_loss"] == -math.inf
  report.plot({"a": run}, str(tmp_path / "report.png"))


def test_a_huge_rate_that_jq_wrote_as_an_integer_is_read_as_a_float(tmp_path):
  """jq 1.6 writes a float from 1e17 up without its point (1e30 as 10000000000000000198846248
  38656): past int64, numpy took the rates as objects, and the plot's isfinite raised."""
  out_dir = write_run(tmp_path / "a", max_iters=1000)
  path = tmp_path / "a" / "metrics.jsonl"
  records = [json.loads(line) for line in path.read_text().splitlines()]
  for r in records:
    r["lr"] = int(1e30)
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  run = report.load(out_dir)
  assert run["train"][0]["lr"] == 1e30 and run["train"][0]["iter"] == 0
  config = {**defaults.get_config().to_dict(), "max_iters": 1000, "learning_rate": 1e30}
  report.plot({"a": run}, str(tmp_path / "report.png"), configs={"a": config})


@pytest.mark.parametrize("event,loss", [("train", "loss"), ("eval", "val_loss")])
def test_a_lone_finite_loss_between_skipped_steps_is_drawn(tmp_path, event, loss):
  """A finite log between two that are not (steps skip_nonfinite skipped) has no line to either
  side: a train loss there was drawn nowhere, the plot the same as with it NaN."""
  run = report.load(write_run(tmp_path, max_iters=1000, eval_interval=100))
  records, path = run[event], str(tmp_path / "report.png")
  records[4][loss], records[6][loss] = math.nan, math.inf
  report.plot({"a": run}, path)
  with_it = matplotlib.image.imread(path)
  records[5][loss] = math.nan  # the axis' limits are the same without it
  report.plot({"a": run}, path)
  assert (matplotlib.image.imread(path) != with_it).any()


def test_the_best_val_loss_is_the_best_finite_one(tmp_path):
  eval_record = lambda it, loss: {"event": "eval", "iter": it, "tokens": it, "train_loss": loss,
                                  "val_loss": loss, "lr": 1e-3}
  run = {"eval": [eval_record(0, math.nan), eval_record(2, 5.1)], "train": [], "tasks": []}
  assert "best val loss 5.1000 at step 2" in report.summary("x", run)
  run["eval"] = [eval_record(0, math.nan)]
  assert "no finite val loss" in report.summary("x", run)
  run["eval"] = [eval_record(0, math.inf)]
  assert "no finite val loss" in report.summary("x", run)


def test_a_best_step_with_no_checkpoint_is_said_so():
  """`--step=N` reads the step the report names: not one whose save is in flight or was
  killed, or step 0, which a run never saves."""
  eval_record = lambda it, loss: {"event": "eval", "iter": it, "tokens": it, "train_loss": loss,
                                  "val_loss": loss, "lr": 1e-3}
  run = {"eval": [eval_record(0, 9.0), eval_record(2000, 5.1), eval_record(4000, 4.6)],
         "train": [], "tasks": []}
  assert "at step 4,000 (4.00K tokens)\n" in report.summary("x", run, [2000, 4000])
  assert ("at step 4,000 (4.00K tokens); no checkpoint of it (it holds steps 1,000, 2,000)\n"
          in report.summary("x", run, [1000, 2000]))
  assert "; no checkpoint of it (it holds none)\n" in report.summary("x", run, [])


@pytest.mark.parametrize("logx", [False, True])
def test_png_has_the_promised_size(tmp_path, logx):
  runs = {"a": report.load(write_run(tmp_path / "a")),
          "b": report.load(write_run(tmp_path / "b", scale=1.1))}
  path = str(tmp_path / "report.png")
  report.plot(runs, path, logx=logx)
  height, width, _ = matplotlib.image.imread(path).shape
  assert (width, height) == (1000, 600)


def test_the_learning_rate_is_drawn_to_the_end_of_the_schedule(tmp_path):
  run = report.load(write_run(tmp_path, max_iters=2000, log_interval=100))
  logged_end = run["train"][-1]["tokens"]  # iteration 1,900's
  # The schedule write_run logs: (it + 1) / 100 of the peak in warmup, then WSD's stable phase.
  saved = {"max_iters": 3000, "warmup_iters": 99, "lr_decay_iters": 3000, "learning_rate": 6e-4,
           "min_lr": 6e-5, "lr_schedule": "wsd", "wsd_decay_frac": 0.2}
  points = report.lr_by_tokens(run, saved)
  tokens, lr = zip(*points)
  assert tokens[-1] == 3000 * TOKENS_PER_ITER > logged_end  # past the records, to max_iters
  assert lr[-1] == pytest.approx(6e-5, rel=1e-4)  # float32 schedule arithmetic
  assert points[:3] == [(0.0, pytest.approx(6e-6)), (TOKENS_PER_ITER, pytest.approx(1.2e-5)),
                        (2 * TOKENS_PER_ITER, pytest.approx(1.8e-5))]  # every warmup iteration
  # A train record's rate is its iteration's, drawn where the iteration starts (its tokens
  # are those after it): logged at 0, 100, ..., drawn at 0, 100 x TOKENS_PER_ITER, ...
  assert report.lr_by_tokens(run, None) == [(r["iter"] * TOKENS_PER_ITER, r["lr"])
                                            for r in run["train"]]


def test_a_long_runs_learning_rate_is_placed_in_linear_time():
  """nanoGPT's 600,000 iterations logged each one: placing each record's rate by itself took
  20 s at 100,000 records and a quarter of an hour at 600,000."""
  n = 200_000
  run = {"train": [{"iter": i, "tokens": (i + 1) * 8, "lr": 1e-3} for i in range(n)],
         "eval": [{"iter": 0, "tokens": 0, "val_loss": 10.0, "lr": 1e-3}]}
  started = time.perf_counter()
  points = report.lr_by_tokens(run, None)
  assert time.perf_counter() - started < 10  # about 0.5 s; 90 s before
  assert points[-1] == ((n - 1) * 8, 1e-3) and len(points) == n


def test_a_schedule_changed_on_resume_is_drawn_as_logged_before_it(tmp_path):
  """config.json holds the resumed run's learning_rate; the iterations before it ran at the
  rates they logged, not at that schedule's."""
  run = report.load(write_run(tmp_path, max_iters=2000, log_interval=100))
  saved = {"max_iters": 3000, "warmup_iters": 99, "lr_decay_iters": 3000, "learning_rate": 3e-4,
           "min_lr": 3e-5, "lr_schedule": "wsd", "wsd_decay_frac": 0.2}
  points = report.lr_by_tokens(run, saved)
  logged = sorted((r["iter"] * TOKENS_PER_ITER, r["lr"]) for r in run["train"] + run["eval"])
  assert points[:len(logged)] == logged
  assert all(t > logged[-1][0] - TOKENS_PER_ITER for t, _ in points[len(logged):])
  assert points[len(logged)][1] == pytest.approx(3e-4, rel=1e-4)
  assert points[-1][1] == pytest.approx(3e-5, rel=1e-4)


def test_iterations_after_the_last_train_log_keep_the_rate_they_ran_at(tmp_path):
  """20 iterations on a 20-iteration cosine, logged at 0 and 10, resumed to 40: iterations
  11-19 ran on the old schedule, which the evaluation at 20 tells; they were drawn on the
  new one, up to 3x too high."""
  first = {"max_iters": 20, "warmup_iters": 2, "lr_decay_iters": 20, "learning_rate": 1e-3,
           "min_lr": 1e-4}
  old = optim.lr_schedule(defaults.view(optim.OptimConfig, defaults.with_defaults(first)), np)
  run = {"train": [{"iter": it, "tokens": (it + 1) * 8, "lr": float(old(it))} for it in (0, 10)],
         "eval": [{"iter": it, "tokens": it * 8, "lr": float(old(it))} for it in (0, 10, 20)],
         "tasks": []}
  points = report.lr_by_tokens(run, {**first, "max_iters": 40, "warmup_iters": 4,
                                     "lr_decay_iters": 40})
  assert (160, pytest.approx(float(old(20)))) in points
  assert not [t for t, _ in points if 88 < t < 160]  # no rate drawn there but the logged ones


def test_the_loss_axis_shows_the_step_0_val_loss(tmp_path):
  run = report.load(write_run(tmp_path))
  train = [(r["tokens"], r["loss"]) for r in run["train"]]
  evals = [(r["tokens"], r["val_loss"]) for r in run["eval"]]
  bottom, top = report.loss_limits(train, evals, logx=False)
  assert top == evals[0][1] == pytest.approx(10.85) and bottom == pytest.approx(3.0, abs=0.01)
  skipped = [(t, math.inf if i == 10 else math.nan if i == 11 else l)
             for i, (t, l) in enumerate(train)]  # steps whose loss was not finite
  assert report.loss_limits(skipped, evals, logx=False) == (bottom, top)


def test_cli_writes_the_png_into_the_first_run(tmp_path):
  a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", scale=1.1)
  r = run_python("-m", "jaxgpt.report", f"--out_dir={a}", f"--out_dir={b}", "--logx")
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith("a\n") and "\n\nb\n" in r.stdout
  assert "best val loss 3.3500" in r.stdout  # run b: 3.3 + 0.05
  assert os.path.isfile(os.path.join(a, "report.png"))


def test_a_run_with_nothing_to_plot_leaves_the_plot_there(tmp_path):
  """A run that died before its first log: its empty metrics.jsonl drew an empty plot over the
  report.png of the run before (one refused with the file named leaves it)."""
  out_dir = write_run(tmp_path / "a", max_iters=200)
  plot = tmp_path / "a" / "report.png"
  report.plot({"a": report.load(out_dir)}, str(plot))
  before = plot.read_bytes()
  metrics = tmp_path / "a" / "metrics.jsonl"
  metrics.write_text("")
  r = run_python("-m", "jaxgpt.report", f"--out_dir={out_dir}")
  assert r.returncode == 1 and r.stderr.strip() == (
      f"error: {metrics}: no train log or evaluation yet; nothing to plot ({plot} not "
      "written)"), r.stderr
  assert plot.read_bytes() == before


def test_logx_with_only_the_step_0_evaluation_leaves_the_plot_there(tmp_path):
  """A log axis leaves token 0 out: a run evaluated at step 0 alone drew an empty plot over
  report.png under --logx."""
  out_dir = write_run(tmp_path / "a", max_iters=200)
  plot = tmp_path / "a" / "report.png"
  report.plot({"a": report.load(out_dir)}, str(plot))
  before = plot.read_bytes()
  metrics = tmp_path / "a" / "metrics.jsonl"
  metrics.write_text(EVAL_0 + "\n")
  r = run_python("-m", "jaxgpt.report", f"--out_dir={out_dir}", "--logx")
  assert r.returncode == 1 and r.stderr.strip() == (
      f"error: {metrics}: no train log or evaluation past token 0 yet, which --logx leaves out; "
      f"nothing to plot ({plot} not written)"), r.stderr
  assert plot.read_bytes() == before


def test_without_matplotlib_the_plot_is_one_error_after_the_table(tmp_path):
  """matplotlib not importable (a broken or partial install): report ended in the import's
  traceback, before its table."""
  out_dir = write_run(tmp_path / "a", max_iters=200)
  argv = ["report", f"--out_dir={out_dir}"]
  r = run_python("-c", f"import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = {argv!r}; "
                 "runpy.run_module('jaxgpt.report', run_name='__main__')")
  assert r.returncode == 1 and "best val loss" in r.stdout, r.stderr
  assert r.stderr.strip() == ("error: the plot needs matplotlib, which did not import (import of "
                              "matplotlib halted; None in sys.modules): pip install matplotlib")


def add_hellaswag(out_dir, every: int = 500, max_iters: int = 2000) -> None:
  """'tasks' records as the loop writes them with eval_tasks=hellaswag, accuracy rising."""
  writer = sinks.MetricsWriter(run_dir.RunDir(str(out_dir)).metrics_path)
  for it in range(0, max_iters + 1, every):
    writer.write({"event": "tasks", "iter": it, "tokens": it * TOKENS_PER_ITER,
                  "hellaswag_acc": 0.25 + it / 1e5, "hellaswag_acc_norm": 0.25 + it / 5e4,
                  "hellaswag_examples": 10042})
  writer.close()


def test_task_scores_get_a_table_and_a_second_panel(tmp_path):
  add_hellaswag(write_run(tmp_path / "a"))
  run = report.load(str(tmp_path / "a"))
  lines = report.summary("a", run).splitlines()
  header = lines.index(next(l for l in lines if "hellaswag_acc_norm" in l and "step" in l))
  assert lines[header].split() == ["step", "tokens", "hellaswag_acc", "hellaswag_acc_norm"]
  assert lines[header + 5].split() == ["2,000", "1.05B", "0.2700", "0.2900"]
  assert "hellaswag_acc_norm: random guessing 0.25, GPT-2 124M 0.2955" in lines
  writer = sinks.MetricsWriter(run_dir.RunDir(str(tmp_path / "a")).metrics_path)
  writer.write({"event": "tasks", "iter": 2500, "tokens": 2500 * TOKENS_PER_ITER,
                "shakespeare_loss": 4.0})  # a resume that scores another task
  writer.close()
  lines = report.summary("a", report.load(str(tmp_path / "a"))).splitlines()
  assert lines[header].split() == ["step", "tokens", "hellaswag_acc", "hellaswag_acc_norm",
                                   "shakespeare_loss"]
  assert lines[header + 6].split() == ["2,500", "1.31B", "-", "-", "4.0000"]
  path = str(tmp_path / "report.png")
  report.plot({"a": run, "b": report.load(write_run(tmp_path / "b"))}, path)
  height, width, _ = matplotlib.image.imread(path).shape
  assert (width, height) == (1000, 900)


def test_a_plot_cut_short_by_a_full_disk_leaves_the_one_before(tmp_path):
  runs = {"a": report.load(write_run(tmp_path / "a"))}
  path = tmp_path / "report.png"
  report.plot(runs, str(path))
  before = path.read_bytes()
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # a write past 4 KiB fails
  try:
    with pytest.raises(UserError, match=r"report.png: cannot write the plot there \(File too "):
      report.plot(runs, str(path))
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["a", "report.png"]  # no temporary file left
  (tmp_path / "plot").write_bytes(b"")  # a symlink's file, of any name: written through
  (tmp_path / "link.png").symlink_to(tmp_path / "plot")
  report.plot(runs, str(tmp_path / "link.png"))
  assert (tmp_path / "link.png").is_symlink() and (tmp_path / "plot").read_bytes() == before


@pytest.mark.skipif(shutil.which("xelatex") is not None, reason="LaTeX writes .pgf here")
def test_a_kind_that_needs_latex_without_it_is_one_error(tmp_path):
  with pytest.raises(UserError, match=r"plot.pgf: matplotlib cannot write it here \('xelatex' "
                                      r"not found.*\); use .png, .pdf or .svg"):
    report.plot({"a": report.load(write_run(tmp_path / "a"))}, str(tmp_path / "plot.pgf"))


def test_out_is_checked_before_the_summaries_and_named_as_written(tmp_path):
  assert report._checked_out(str(tmp_path / "plot")) == str(tmp_path / "plot.png")
  assert report._checked_out(str(tmp_path / "plot.svg")) == str(tmp_path / "plot.svg")
  for out, why in [(tmp_path, "a directory; give a file"),
                   (tmp_path / "no" / "plot", "no directory"),  # .png added, then checked
                   (tmp_path / "plot.txt", "matplotlib cannot write .txt files")]:
    with pytest.raises(UserError, match=why):
      report._checked_out(str(out))


@pytest.mark.slow  # a command line
def test_a_required_repeatable_flag_is_one_line():
  r = run_python("-m", "jaxgpt.report")
  assert r.returncode == 1
  assert r.stderr.strip() == ("error: --out_dir is required: A run directory holding "
                              "metrics.jsonl; repeat the flag to compare runs.")


@pytest.mark.slow  # a command line
def test_a_word_for_a_boolean_says_so(tmp_path):
  r = run_python("-m", "jaxgpt.report", f"--out_dir={tmp_path}", "--logx=maybe")
  assert r.returncode == 1 and r.stderr.strip() == "error: --logx=maybe: not a boolean (true or false)"


def test_an_unreadable_metrics_file_is_one_error(tmp_path, monkeypatch):
  (tmp_path / "metrics.jsonl").write_text("")

  def denied(path, *args, **kwargs):
    raise PermissionError(13, "Permission denied", str(path))

  monkeypatch.setattr(run_dir, "open", denied, raising=False)  # another user's run, say
  with pytest.raises(UserError, match=r"metrics.jsonl: cannot read it \(Permission denied\)"):
    report.load(str(tmp_path))
  (tmp_path / "config.json").write_text("{}")
  monkeypatch.setattr(errors, "open", denied, raising=False)  # read_config's reader
  with pytest.raises(UserError, match=r"config.json: cannot read it \(Permission denied\)"):
    run_dir.RunDir(str(tmp_path)).read_config()


def test_one_train_log_is_not_said_to_be_skipped():
  record = {"event": "train", "iter": 0, "tokens": 8, "loss": 1.0, "lr": 1e-3,
            "ms_per_iter": 2.0, "tokens_per_sec": 4.0, "mfu": None}
  text = report.summary("x", {"train": [record], "eval": [], "tasks": []})
  assert text.splitlines()[-1] == ("throughput: median 4 tok/s, 2.0 ms/iter "
                                   "(over 1 train log, the first: one step)")


def test_a_config_json_edited_into_nonsense_draws_the_logged_rates():
  records = [{"event": "eval", "iter": 0, "tokens": 0, "train_loss": 1.0, "val_loss": 1.0,
              "lr": 0.0},
             {"event": "train", "iter": 0, "tokens": 8, "loss": 1.0, "lr": 1e-4},
             {"event": "train", "iter": 1, "tokens": 16, "loss": 1.0, "lr": 2e-4}]
  run = {"eval": records[:1], "train": records[1:], "tasks": []}
  assert report.lr_by_tokens(run, {"max_iters": "abc"}) == [(0, 1e-4), (8, 2e-4)]
  huge = {"max_iters": 10**13, "warmup_iters": 10**13 - 1, "lr_decay_iters": 10**13}
  assert len(report.lr_by_tokens(run, huge)) <= 2 * report.LR_POINTS  # was 10**13 iterations


def test_the_best_val_loss_is_the_lowest_not_the_last():
  """A val loss that rises after its best, then a NaN: the best is the lowest finite one."""
  record = lambda it, loss: {"event": "eval", "iter": it, "tokens": 1000 * it,
                             "train_loss": loss, "val_loss": loss, "lr": 1e-3}
  run = {"eval": [record(0, 4.0), record(1, 2.5), record(2, 2.8), record(3, math.nan)],
         "train": [], "tasks": []}
  assert "best val loss 2.5000 at step 1 (1.00K tokens)" in report.summary("x", run)


def train_record(it: int, tok_s: float, ms: float, mfu: float) -> dict:
  return {"event": "train", "iter": it, "tokens": 8 * (it + 1), "loss": 1.0, "lr": 1e-3,
          "ms_per_iter": ms, "tokens_per_sec": tok_s, "mfu": mfu}


def test_throughput_is_the_median_of_the_logs_after_the_first():
  """The first log times one step (with the compilation); a slow or fast log among the rest
  does not move the median. write_run's logs are all alike after the first, so the table test
  could not tell a median from a mean, nor the first log skipped from counted."""
  logs = [train_record(0, 100_000.0, 50.0, 0.10),  # compiling: skipped
          train_record(10, 400_000.0, 20.0, 0.30),
          train_record(20, 600_000.0, 10.0, 0.40),
          train_record(30, 5_000_000.0, 30.0, 0.50)]  # an outlier: a median ignores it
  text = report.summary("x", {"train": logs, "eval": [], "tasks": []})
  assert text.splitlines()[-1] == ("throughput: median 600,000 tok/s, 20.0 ms/iter, MFU 40.0% "
                                   "(over 3 train logs, the first skipped)")


def test_the_first_log_of_every_start_is_skipped(tmp_path):
  """A run preempted every few logs on one layout: each start's first log (train.py names its
  devices there) times one step at 1,000 tok/s. Only the run's first was skipped; the
  resumes' firsts, 3 of the 5 counted, made the median theirs."""
  writer = sinks.MetricsWriter(run_dir.RunDir(str(tmp_path)).metrics_path)
  for start in ([0, 10], [20], [30], [40, 50]):
    writer.write({**train_record(start[0], 1_000.0, 8.0, 0.00375), "devices": "1 x cpu"})
    for it in start[1:]:
      writer.write(train_record(it, 80_000.0, 0.1, 0.3))
  writer.close()
  logs = report.load(str(tmp_path))["train"]
  text = report.summary("x", {"train": logs, "eval": [], "tasks": []})
  assert text.splitlines()[-1] == ("throughput: median 80,000 tok/s, 0.1 ms/iter, MFU 30.0% "
                                   "(over 2 train logs, the first of each of 4 starts skipped)")
  records, _ = report.last_layout(logs)  # as plan reads the run
  assert report.median_throughput(records)["tokens_per_sec"] == 80_000.0
  firsts = [r for r in logs if "devices" in r]
  assert report.summary("x", {"train": firsts, "eval": [], "tasks": []}).endswith(
      "(over 4 train logs, each a start's first, with its compile)")


def test_throughput_is_the_last_start_s_cards_after_a_resume_on_others():
  """10 logs on an A100 at 10k tok/s, then a resume on an H100 at 30k, one layout (the same
  tokens per iteration): the median was the A100's, the longer one, as plan read it too."""
  a100, h100 = "1 x NVIDIA A100-SXM4-40GB", "1 x NVIDIA H100 80GB HBM3"
  logs = [train_record(it, tok_s, 8_000 / tok_s, 0.3) for it in range(0, 140, 10)
          for tok_s in [10_000.0 if it < 100 else 30_000.0]]
  logs[0]["devices"], logs[10]["devices"] = a100, h100
  text = report.summary("x", {"train": logs, "eval": [], "tasks": []})
  assert text.splitlines()[-1] == (
      f"throughput: median 30,000 tok/s, 0.3 ms/iter, MFU 30.0% (over 3 train logs, the first "
      f"skipped; since the resume on {h100}, first logged at iter 100)")
  records, _ = report.last_layout(logs)  # as plan reads the run
  assert records[0]["iter"] == 100
  logs[10]["devices"] = a100  # a resume on the same cards: one median
  assert report.last_layout(logs)[0] == logs
  assert "(over 12 train logs, the first of each of 2 starts skipped)" in report.summary(
      "x", {"train": logs, "eval": [], "tasks": []})


def test_a_resume_on_other_cards_is_not_measured_by_its_first_log_alone():
  """The resume's first log on the H100 (one step, its compile in it) was taken for the H100's
  speed, by report and by plan, where a resume on another layout is not measured yet."""
  a100, h100 = "1 x NVIDIA A100-SXM4-40GB", "1 x NVIDIA H100 80GB HBM3"
  logs = [train_record(it, 10_000.0, 0.8, 0.3) for it in range(0, 110, 10)]
  logs[0]["devices"] = a100
  logs[10] = {**train_record(100, 500.0, 16.0, 0.01), "devices": h100}
  text = report.summary("x", {"train": logs, "eval": [], "tasks": []})
  assert text.splitlines()[-1] == ("throughput: not measured yet on the devices of the last "
                                   "resume")
  assert report.last_layout(logs)[0] == []  # as plan reads the run


def test_an_even_count_of_logs_gives_one_log_s_rate_and_step_time():
  """Each figure's median of two middle logs was their mean: tok/s and ms/iter, each the other's
  reciprocal, then named two speeds (6,000 tok/s and 1.5 ms/iter, at 8 tokens an iteration)."""
  logs = [train_record(it, 8_000 / ms, ms, 0.1 / ms) for it, ms in ((0, 50.0), (10, 1.0),
                                                                      (20, 4.0), (30, 2.0),
                                                                      (40, 1.0))]
  text = report.summary("x", {"train": logs, "eval": [], "tasks": []})
  assert text.splitlines()[-1] == ("throughput: median 4,000 tok/s, 2.0 ms/iter, MFU 5.0% "
                                   "(over 4 train logs, the first skipped)")


def test_the_skipped_steps_are_counted_as_of_the_last_train_log():
  """Only train logs carry skip_nonfinite's count: steps skipped after the last one (up to the
  run's end at 2,000) are in no record, and the count was said as the run's."""
  logs = [{**train_record(it, 8_000.0, 1.0, 0.1), **({"skipped_steps": 2} if it else {})}
          for it in range(0, 2000, 100)]
  text = report.summary("x", {"train": logs, "eval": [], "tasks": []})
  assert text.splitlines()[-1] == ("2 iterations skipped for a non-finite loss or gradient "
                                   "(skip_nonfinite) as of iter 1,900, the last train log")


def test_a_text_task_s_token_count_is_no_score_column():
  """eval_tasks=text:FILE writes <task>_loss, _ppl and _tokens; the count is no score."""
  record = {"event": "tasks", "iter": 0, "tokens": 0, "wiki_loss": 3.0, "wiki_ppl": 20.0855,
            "wiki_tokens": 86}
  lines = report.summary("x", {"train": [], "eval": [], "tasks": [record]}).splitlines()
  assert lines[2].split() == ["step", "tokens", "wiki_loss", "wiki_ppl"]
  assert lines[3].split() == ["0", "0", "3.0000", "20.0855"]


def test_a_task_column_is_as_wide_as_its_widest_score():
  """text:test.txt at step 0: a perplexity of ~47,000 is 10 characters, which ran past its
  8-wide column and pushed the row out of line with the header."""
  records = [{"event": "tasks", "iter": it, "tokens": tokens, "test_loss": loss, "test_ppl": ppl}
             for it, tokens, loss, ppl in ((0, 0, 10.7541, 46819.7644),
                                           (500, 262_144_000, 3.2, 24.5325))]
  lines = report.summary("x", {"train": [], "eval": [], "tasks": records}).splitlines()[2:5]
  assert lines[1].endswith(" 10.7541 46819.7644") and lines[2].endswith("  3.2000    24.5325")
  assert len({len(line) for line in lines}) == 1, lines  # header and rows end together


def test_runs_of_one_directory_name_are_told_apart_by_their_paths():
  """runs/a/out and runs/b/out: named by basename alone, the second run replaced the first in
  the report (one summary, one curve) without a word."""
  assert report._names(["runs/a/out", "runs/b/out/", "runs/c"]) == [
      "runs/a/out", "runs/b/out", "c"]


def test_a_run_given_as_dot_is_named_by_its_folder(tmp_path, monkeypatch):
  """`cd out/quickstart && report --out_dir=.` titled the run '.' in the summary and the
  legend ('. train', '. val')."""
  (tmp_path / "quickstart").mkdir()
  monkeypatch.chdir(tmp_path / "quickstart")
  assert report._names([".", "../other/x"]) == ["quickstart", "x"]
  assert report._names([".", "..", "../quickstart/"]) == [".", tmp_path.name, "../quickstart"]
  assert report._names(["/"]) == ["/"]


def test_a_run_whose_folder_name_is_not_utf8_is_plotted(tmp_path):
  """A Latin-1 byte in the name: matplotlib's legend ended in a traceback."""
  out_dir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xe9n")
  write_run(out_dir, max_iters=200)
  r = run_python("-m", "jaxgpt.report", f"--out_dir={out_dir}", f"--out={tmp_path}/r.png")
  assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert report._names([out_dir]) == ["r\N{REPLACEMENT CHARACTER}n"]
  other = os.fsdecode(b"runs/r\xe8n")  # shown alike: told apart by their paths
  assert report._names([os.fsdecode(b"old/r\xe9n"), other]) == [
      "old/r\N{REPLACEMENT CHARACTER}n", "runs/r\N{REPLACEMENT CHARACTER}n"]


def test_a_file_given_as_the_run_directory_is_called_a_file(tmp_path):
  """`report --out_dir=notes.txt` said 'notes.txt/metrics.jsonl: no such metrics file (is the
  directory a run's out_dir?)', calling the file a directory."""
  (tmp_path / "notes.txt").write_text("text")
  with pytest.raises(UserError, match=r"notes.txt: a file, not a run directory"):
    run_dir.RunDir(str(tmp_path / "notes.txt")).read_metrics()
