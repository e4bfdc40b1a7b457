"""HellaSwag and text perplexity, in the loop and from the CLI, checked against transformers."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  WORDS,
  float32_config,
  guard_loop_transfers,
  records,
  run_python,
  tiny_config,
  tiny_model,
  write_hellaswag,
)

import launch
from jaxgpt import defaults, tokenizer
from jaxgpt.errors import UserError
from jaxgpt.evals import hellaswag, tasks
from jaxgpt.inference import scoring
from jaxgpt.interop import gpt2
from jaxgpt.model import GPT, GPTConfig, init_params


def gpt2_vocab_config(**overrides):
  """A tiny model that reads GPT-2's tokens.

  Its vocabulary is GPT-2's 50257, unpadded: export crops padding rows, which
  would otherwise take a share of the softmax here and not in transformers.
  """
  return float32_config(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32,
                            "vocab_size": tokenizer.N_VOCAB, **overrides})


def scaled_params(config, scale: float = 4.0):
  """Random weights large enough that the four endings' losses are far apart."""
  params = init_params(GPT(GPTConfig.from_config(config)), jax.random.PRNGKey(1))
  return jax.tree.map(lambda p: scale * p, params)


def test_hellaswag_losses_equal_transformers_on_the_same_weights(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = gpt2_vocab_config()
  params = scaled_params(config)
  path = write_hellaswag(tmp_path / "hs.jsonl", 12, long_context=40)  # row 0 is cut to 33
  examples = hellaswag.read(path)
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(config)), rows_per_batch=8)
  rows = hellaswag.rows(examples, config.block_size)
  ours = scorer.loss_sums(params, scorer.batches(rows), len(rows))

  # build-nanogpt's way, on transformers' GPT-2 and tokenizer; a context too long for
  # block_size + 1 tokens with the longest ending is cut once, for all four.
  gpt2.export(params, GPTConfig.from_config(config), str(tmp_path / "hf"))
  model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  sums, means, labels = [], [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      example = json.loads(line)
      ends = [hf_tokenizer.encode(" " + ending) for ending in example["endings"]]
      ctx = hf_tokenizer.encode(example["ctx"])
      room = config.block_size + 1 - max(map(len, ends))
      ctx = ctx[-room:] if len(ctx) > room else ctx
      labels.append(example["label"])
      for end in ends:
        row = torch.tensor(ctx + end)
        mask = torch.tensor([0] * len(ctx) + [1] * len(end))[-len(row):]
        with torch.no_grad():
          logits = model(row[None, :-1]).logits[0]
        losses = torch.nn.functional.cross_entropy(logits, row[1:], reduction="none")
        sums.append(float((losses * mask[1:]).sum()))
        means.append(sums[-1] / float(mask[1:].sum()))
  assert len(examples[0].context) > config.block_size + 1  # the cut is tested
  assert len({len(ending) for ending in examples[0].endings}) > 1  # ... on endings of 2+ lengths
  assert hellaswag.n_cut(examples, config.block_size) == 1
  np.testing.assert_allclose(ours, sums, rtol=2e-6)
  sums_E4, means_E4 = np.reshape(sums, (-1, 4)), np.reshape(means, (-1, 4))
  expected = {"acc": np.mean(sums_E4.argmin(1) == labels),
              "acc_norm": np.mean(means_E4.argmin(1) == labels), "examples": 12}
  assert hellaswag.accuracy(examples, rows, ours) == pytest.approx(expected)
  for losses_E4 in (sums_E4, means_E4):  # no near-tie decides an argmin
    assert np.all(np.diff(np.sort(losses_E4, axis=1)[:, :2], axis=1) > 1e-3)


def test_hellaswag_picks_the_least_summed_and_mean_ending_loss_after_the_context(
    tmp_path, monkeypatch):
  """llm.c's and build-nanogpt's scoring, without torch: each ending's tokens alone are scored
  (not the context's), acc takes the least summed loss and acc_norm the least mean; the model
  is a stub whose loss of a token is a number per word (0 for the context's words)."""
  enc = tokenizer.gpt2()
  loss_of = {" green": 3.0, " red": 1.0, " blue": 5.0}
  losses_V = np.zeros(tokenizer.N_VOCAB, np.float32)
  for word, loss in loss_of.items():
    losses_V[enc.encode_ordinary(word)] = loss
  monkeypatch.setattr(GPT, "token_losses", lambda model, idx_BT, scored_BS, targets_BS:
                      jnp.asarray(losses_V)[targets_BS])
  ctx = "The painter dips a wide brush in the can and climbs the old ladder"  # 14 tokens
  examples = [  # ending: summed loss, mean loss
      (["green", "red red red red red", "blue", "blue green"], 1),  # 3, 3; 5, 1; 5, 5; 8, 4
      (["red", "blue", "green green", "blue red"], 0)]  # 1, 1; 5, 5; 6, 3; 6, 3
  path = tmp_path / "hs.jsonl"
  path.write_text("".join(json.dumps({"ind": i, "ctx": ctx, "endings": endings, "label": label,
                                      "split": "val"}) + "\n"
                          for i, (endings, label) in enumerate(examples)), encoding="utf-8")
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(gpt2_vocab_config())))
  metrics, lines = tasks.score(scorer, {}, tasks.load("hellaswag", scorer,
                                                      hellaswag_file=str(path)))
  # Example 0's acc picks the 1-token "green" (sum 3), its acc_norm the label (mean 1); counting
  # the context's 13 predicted tokens (at 0) would pick "green" for acc_norm too (3/14 < 5/18).
  assert metrics == {"hellaswag_acc": 0.5, "hellaswag_acc_norm": 1.0, "hellaswag_examples": 2}
  assert lines[0].startswith("hellaswag: acc 0.5000 ± 0.3536, acc_norm 1.0000 ± 0.0000 over 2 ")


def test_one_compilation_per_bucket_and_none_on_the_next_evaluation(tmp_path):
  config = gpt2_vocab_config()
  params = scaled_params(config)
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(config)), rows_per_batch=16)
  task_list = tasks.load("hellaswag", scorer, hellaswag_file=write_hellaswag(
      tmp_path / "hs.jsonl", 20, long_context=40))
  shapes = {(b.inputs_RT.shape, b.scored_RS.shape) for b in task_list[0].batches}
  assert all(rows == 16 for (rows, _), _ in shapes)
  first = tasks.score(scorer, params, task_list)
  assert scorer._loss_sums._cache_size() == len(shapes) < len(task_list[0].batches)
  assert tasks.score(scorer, params, task_list) == first
  assert scorer._loss_sums._cache_size() == len(shapes)
  progress = []  # what evaluate's bar hears: each batch's real rows, as they arrive
  tasks.metrics(scorer, params, task_list[0], progress.append)
  assert len(progress) == len(task_list[0].batches) and sum(progress) == 80  # 20 x 4 endings


def test_text_windows_score_every_token_but_the_first_once():
  tokens = list(range(100))
  for block_size, stride in ((16, 0), (16, 16), (16, 5), (16, 1), (7, 3)):
    rows = tasks.text_rows(tokens, block_size, stride)
    scored = [t for row, n in rows for t in row[-n:]]
    assert scored == tokens[1:], (block_size, stride)
    assert all(len(row) <= block_size + 1 for row, _ in rows)
    if stride and stride < block_size:  # every scored token sees block_size + 1 - stride or more
      assert all(len(row) - n >= block_size + 1 - stride for row, n in rows[1:])
  assert [len(row) for row, _ in tasks.text_rows(tokens, 16)] == [17] * 6 + [4]


def test_text_perplexity_equals_transformers_over_the_same_windows(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = gpt2_vocab_config()
  params = scaled_params(config, scale=2.0)
  text_file = tmp_path / "book.txt"
  text_file.write_text(" ".join(WORDS * 4) + "\n\nThe end.", encoding="utf-8")
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(config)), rows_per_batch=4)
  result = tasks.metrics(scorer, params, tasks.load(f"text:{text_file}", scorer)[0])
  assert tasks.load(f"text:{text_file}", scorer, limit=1)[0].about.startswith(
      f"1 window of up to {config.block_size + 1} tokens, ")  # was '1 windows'

  gpt2.export(params, GPTConfig.from_config(config), str(tmp_path / "hf"))
  model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
  ids = torch.tensor(tokenizer.gpt2().encode_ordinary(text_file.read_text()))
  total = 0.0
  for start in range(0, len(ids) - 1, config.block_size):  # non-overlapping windows
    window = ids[start:start + config.block_size + 1]
    with torch.no_grad():
      logits = model(window[None, :-1]).logits[0]
    total += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
  assert result["tokens"] == len(ids) - 1
  assert result["loss"] == pytest.approx(total / (len(ids) - 1), rel=1e-6)
  assert result["ppl"] == pytest.approx(math.exp(total / (len(ids) - 1)), rel=1e-5)


def test_a_text_is_scored_as_its_bytes_say(tmp_path):
  """Windows line ends stay '\r\n' (text mode would read '\n'), as prepare reads them."""
  path = tmp_path / "crlf.txt"
  path.write_bytes(b"Hello world.\r\nSecond line here.\r\n")
  assert tasks.read_text_tokens(str(path)) == tokenizer.gpt2().encode_ordinary(
      "Hello world.\r\nSecond line here.\r\n")


def test_an_ending_that_fills_the_block_leaves_the_context_s_last_token():
  """Every row scores its ending after at least one token (the scorer refuses a row scoring
  none); the long ending keeps its last block_size tokens."""
  examples = [hellaswag.Example([1, 2, 3], [[4] * 20, [5], [6, 7], [8]], 0)]
  rows = hellaswag.rows(examples, 16)
  assert rows == [([4] * 17, 16), ([3, 5], 1), ([3, 6, 7], 2), ([3, 8], 1)]
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(gpt2_vocab_config(block_size=16))))
  scored = [i for batch in scorer.batches(rows) for i in batch.index_R if i >= 0]
  assert sorted(scored) == [0, 1, 2, 3]


def test_non_finite_losses_are_no_accuracy_and_a_huge_loss_no_overflow():
  examples = [hellaswag.Example([1, 2], [[3], [4], [5], [6]], 0)]
  rows = hellaswag.rows(examples, 16)
  assert math.isnan(hellaswag.accuracy(examples, rows, np.array([np.nan, 1, 2, 3]))["acc"])
  assert tasks.perplexity([([1, 2], 1)], np.array([800.0]))["ppl"] == math.inf
  assert math.isnan(tasks.perplexity([([1, 2], 1)], np.array([np.nan]))["ppl"])  # not inf


def test_bad_input_is_one_user_error_naming_what(tmp_path):
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(gpt2_vocab_config())))
  bad = tmp_path / "bad.jsonl"
  write_hellaswag(bad, 3)
  lines = bad.read_text().splitlines()
  bad.write_text("\n".join([lines[0], '{"ctx": "x", "endings": ["a"], "label": 0}',
                            lines[2]]) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:2: not a HellaSwag example"):
    tasks.load("hellaswag", scorer, hellaswag_file=str(bad))
  bad.write_text(lines[0] + "\n{not json\n")
  with pytest.raises(UserError, match=r"bad.jsonl:2: not a HellaSwag example \(JSONDecodeError"):
    tasks.load("hellaswag", scorer, hellaswag_file=str(bad))
  with pytest.raises(UserError, match="nope.jsonl: not found"):
    tasks.load("hellaswag", scorer, hellaswag_file=str(tmp_path / "nope.jsonl"))
  with pytest.raises(UserError, match="text:.*missing.txt: no such file"):
    tasks.load(f"text:{tmp_path}/missing.txt", scorer)
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(UserError, match="text:.*empty.txt: 0 token"):
    tasks.load(f"text:{tmp_path}/empty.txt", scorer)
  with pytest.raises(UserError, match="unknown evaluation task 'mmlu'"):
    tasks.load("hellaswag,mmlu", scorer)
  with pytest.raises(UserError, match="text: names no file: the task is text:FILE"):
    tasks.load("text:", scorer)
  with pytest.raises(UserError, match=r"limit=-3: must be >= 0"):
    tasks.load(f"text:{bad}", scorer, limit=-3)
  small = scoring.Scorer(GPT(GPTConfig.from_config(gpt2_vocab_config(vocab_size=96))))
  with pytest.raises(UserError, match="vocab_size=96 cannot hold GPT-2's 50257 tokens"):
    tasks.load("hellaswag", small, hellaswag_file=str(bad))


@pytest.mark.parametrize("label", ["2.7", "true", "1e400", '"x"', "null", '"\\u00b2"'])
def test_a_label_that_is_not_an_index_is_refused_naming_its_line(tmp_path, label):
  """Not read as an index (2.7 as 2, true as 1) or a traceback (1e400's overflow, "²": a
  digit to isdigit, not to int)."""
  path = tmp_path / "hs.jsonl"
  write_hellaswag(path, 2)
  lines = path.read_text().splitlines()
  lines[1] = json.dumps({**json.loads(lines[1]), "label": "LABEL"}).replace('"LABEL"', label)
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(UserError, match=r"hs.jsonl:2: not a HellaSwag example"):
    hellaswag.read(str(path))


def test_a_label_written_as_digits_is_read(tmp_path):  # as Hugging Face's copy writes it
  path = tmp_path / "hs.jsonl"
  write_hellaswag(path, 1)
  record = json.loads(path.read_text())
  path.write_text(json.dumps({**record, "label": str(record["label"])}) + "\n")
  assert hellaswag.read(str(path))[0].label == record["label"]


def test_an_unreadable_hellaswag_file_is_one_user_error(tmp_path, monkeypatch):
  path = write_hellaswag(tmp_path / "hs.jsonl", 2)

  def refuse(*args, **kwargs):  # as chmod 000 would, where the tests do not run as root
    raise PermissionError(13, "Permission denied", path)

  monkeypatch.setattr(hellaswag, "open", refuse, raising=False)
  with pytest.raises(UserError, match="hs.jsonl: Permission denied"):
    hellaswag.read(path)


@pytest.mark.parametrize("eval_tasks,hellaswag_file,said", [
    ("text:{tmp}/missing.txt", "", "missing.txt: no such file"),
    ("hellaswag", "{tmp}/missing.jsonl", "missing.jsonl: not found"),
    ("text:{tmp}/empty.txt", "", "empty.txt: 0 token"),
    ("hellaswag", "{tmp}/bad.jsonl", "bad.jsonl:1: not a HellaSwag example")])
def test_a_missing_or_unreadable_task_file_is_refused_before_the_data_is_made(
    tmp_path, monkeypatch, eval_tasks, hellaswag_file, said):
  """Not after tokenizing a corpus (hours of FineWeb) or loading GPT-2's weights."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "bad.jsonl").write_text("{not json\n")
  config = defaults.recipe("quickstart")  # python_docs, tokenized where it is missing
  config.update(out_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "python_docs"),
                eval_tasks=eval_tasks.format(tmp=tmp_path),
                hellaswag_file=hellaswag_file.format(tmp=tmp_path))
  with pytest.raises(UserError, match=said):
    launch.run(config)
  assert not (tmp_path / "python_docs").exists()


def test_two_tasks_of_one_name_are_refused_naming_both(tmp_path):
  scorer = scoring.Scorer(GPT(GPTConfig.from_config(gpt2_vocab_config())))
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  for path in (tmp_path / "a" / "notes.txt", tmp_path / "b" / "notes.md",
               tmp_path / "hellaswag.txt"):
    path.write_text(" ".join(WORDS), encoding="utf-8")
  with pytest.raises(UserError, match=re.escape(
      f"evaluation tasks 'text:{tmp_path}/a/notes.txt' and 'text:{tmp_path}/b/notes.md' are "
      "both named 'notes'")):
    tasks.load(f"text:{tmp_path}/a/notes.txt,text:{tmp_path}/b/notes.md", scorer)
  with pytest.raises(UserError, match=re.escape(
      f"'hellaswag' and 'text:{tmp_path}/hellaswag.txt' are both named 'hellaswag'")):
    tasks.load(f"hellaswag,text:{tmp_path}/hellaswag.txt", scorer)
  loaded = tasks.load(f"text:{tmp_path}/a/notes.txt,text:{tmp_path}/hellaswag.txt", scorer)
  assert [t.name for t in loaded] == ["notes", "hellaswag"]


def test_without_a_network_the_download_says_where_to_put_the_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError) as e:
    hellaswag.download("http://127.0.0.1:9/hellaswag_val.jsonl", hellaswag.CACHE_PATH,
                       timeout_s=5)
  assert f"put it at {hellaswag.CACHE_PATH}" in str(e.value) and "hellaswag_file" in str(e.value)
  assert list(tmp_path.iterdir()) == []  # nothing half-written, no folder it made, is left

  class Stopped:  # a response that a Ctrl-C interrupts after its first chunk
    def __init__(self):
      self.chunks = [b"x" * 10]

    __enter__ = lambda self: self
    __exit__ = lambda self, *exc: None

    def read(self, n):
      if self.chunks:
        return self.chunks.pop()
      raise KeyboardInterrupt

  monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout: Stopped())
  with pytest.raises(KeyboardInterrupt):
    hellaswag.download("http://example/hellaswag_val.jsonl", hellaswag.CACHE_PATH)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cut", ["short of its length", "mid-chunk"])
def test_a_download_cut_short_leaves_no_cache_file(tmp_path, monkeypatch, cut):
  """A connection that closes early is a failed download, not a cache file to score on."""
  headers = ("Content-Length: 1000" if cut == "short of its length" else
             "Transfer-Encoding: chunked")
  body = '{"ctx": "A man", "endings"' if cut == "short of its length" else "3e8\r\nabc"
  server = socket.create_server(("127.0.0.1", 0))

  def answer_once():
    conn, _ = server.accept()
    conn.recv(65536)
    conn.sendall(f"HTTP/1.1 200 OK\r\n{headers}\r\n\r\n{body}".encode())
    conn.close()

  threading.Thread(target=answer_once, daemon=True).start()
  monkeypatch.chdir(tmp_path)
  url = f"http://127.0.0.1:{server.getsockname()[1]}/hellaswag_val.jsonl"
  why = (r"the connection closed after 26 of 1,000 bytes" if cut == "short of its length" else
         r"the transfer broke off: IncompleteRead\(.*\)")
  with pytest.raises(UserError, match=rf"^could not download .*\({why}\)\. Fetch it"):
    hellaswag.download(url, hellaswag.CACHE_PATH, timeout_s=10)
  server.close()
  assert list(tmp_path.iterdir()) == []


def test_a_download_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "data").write_text("a file where the cache folder would go")
  with pytest.raises(UserError, match=r"^data/cache: cannot make the folder to download .* "
                                      r"\(Not a directory\); pass a HellaSwag file's path"):
    hellaswag.download("http://127.0.0.1:9/hellaswag_val.jsonl", hellaswag.CACHE_PATH)


@pytest.mark.parametrize("kind", ["directory", "dangling link"])
def test_a_cache_path_that_is_not_a_file_is_refused_before_a_download(tmp_path, monkeypatch,
                                                                       kind):
  """A folder (or a link to no file) where the download would go is left as it was, not a
  traceback after the download with its .part file left beside it."""
  monkeypatch.chdir(tmp_path)
  os.makedirs(os.path.dirname(hellaswag.CACHE_PATH))
  if kind == "directory":
    os.mkdir(hellaswag.CACHE_PATH)
  else:
    os.symlink("elsewhere.jsonl", hellaswag.CACHE_PATH)
  monkeypatch.setattr(hellaswag, "download", lambda url, path: pytest.fail("downloaded"))
  with pytest.raises(UserError, match=rf"^{re.escape(hellaswag.CACHE_PATH)}: a .*; move it "
                                      r"aside, or pass a HellaSwag file's path"):
    hellaswag.resolve("")
  assert os.listdir(os.path.dirname(hellaswag.CACHE_PATH)) == ["hellaswag_val.jsonl"]


# evaluate's CLI, HellaSwag's download replaced by an exit that says it ran.
NO_DOWNLOAD = """
import os, sys
from jaxgpt import cli, evaluate
from jaxgpt.evals import hellaswag
hellaswag.CACHE_PATH = os.environ["CACHE_PATH"]  # none there: a download would be its next step
hellaswag.download = lambda url, path: sys.exit(f"downloaded {url}")
evaluate._define_flags()
sys.argv[0] = "evaluate"
cli.run(evaluate.main, beside_training=True)
"""


@pytest.mark.slow
def test_a_vocabulary_other_than_gpt2_s_is_refused_before_hellaswag_s_download(tmp_path,
                                                                               token_dir):
  """A character-level run cannot read HellaSwag's GPT-2 tokens: said before the download."""
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2)  # vocab_size 96
  launch.run(config)
  r = run_python("-c", NO_DOWNLOAD, f"--out_dir={config.out_dir}", "--task=hellaswag",
                 CACHE_PATH=str(tmp_path / "cache" / "hellaswag_val.jsonl"))
  assert r.returncode == 1 and "downloaded" not in r.stderr, r.stderr[-2000:]
  assert "error: the model's vocab_size=96 cannot hold GPT-2's 50257 tokens" in r.stderr


@pytest.mark.slow
def test_the_loop_scores_eval_tasks_and_records_them(tmp_path, token_dir):
  hs = write_hellaswag(tmp_path / "hs.jsonl", 6)
  text_file = tmp_path / "notes.txt"
  text_file.write_text(" ".join(WORDS * 3), encoding="utf-8")
  config = tiny_config(tmp_path, token_dir, vocab_size=50304, max_iters=4, eval_interval=4,
                       eval_tasks=f"hellaswag,text:{text_file}", eval_tasks_interval=2,
                       hellaswag_file=hs)
  launch.run(config)
  scored = records(config.out_dir, "tasks")
  assert [r["iter"] for r in scored] == [0, 2, 4]
  assert [r["iter"] for r in records(config.out_dir, "eval")] == [0, 4]  # its own interval
  last = scored[-1]
  assert {"hellaswag_acc", "hellaswag_acc_norm", "notes_loss", "notes_ppl"} <= last.keys()
  assert last["hellaswag_examples"] == 6 and 0 <= last["hellaswag_acc_norm"] <= 1
  # The CLI on the last checkpoint gives the numbers the loop recorded.
  r = run_python("-m", "jaxgpt.evaluate", f"--out_dir={config.out_dir}",
                 f"--task=hellaswag,text:{text_file}", f"--hellaswag_file={hs}")
  assert r.returncode == 0, r.stderr[-2000:]
  acc_norm = last["hellaswag_acc_norm"]
  se = (acc_norm * (1 - acc_norm) / 6) ** 0.5
  assert f"acc_norm {acc_norm:.4f} ± {se:.4f} over 6 examples (± one standard error" in r.stdout
  windows = len(tasks.text_rows(tokenizer.gpt2().encode_ordinary(text_file.read_text()), 16))
  assert (f"notes: {windows} windows of up to 17 tokens, {last['notes_tokens']:,} tokens scored "
          "(--limit=N scores the first N windows)") in r.stderr
  assert f"perplexity {last['notes_ppl']:.2f} over {last['notes_tokens']:,} tokens" in r.stdout
  assert f", {config.out_dir} step 4, " in r.stdout  # the weights, where the result is kept


@pytest.mark.slow
def test_eval_tasks_add_no_wait_between_log_points(tmp_path, token_dir, monkeypatch):
  """Task scoring fetches from the device inside its own method only, as evaluation does."""
  guard_loop_transfers(monkeypatch)
  config = tiny_config(tmp_path, token_dir, vocab_size=50304, max_iters=6, log_interval=2,
                       eval_interval=6, eval_tasks="hellaswag", eval_tasks_interval=3,
                       hellaswag_file=write_hellaswag(tmp_path / "hs.jsonl", 3))
  launch.run(config)
  assert [r["iter"] for r in records(config.out_dir, "tasks")] == [0, 3, 6]


def test_config_names_a_bad_task_and_takes_nanogpt_paths(tmp_path, token_dir):
  config = tiny_config(tmp_path, token_dir, eval_tasks="hellaswag,mmlu")
  with pytest.raises(UserError, match="config.eval_tasks='hellaswag,mmlu': unknown evaluation "
                                      "task 'mmlu'"):
    defaults.validate(config)
  config.update(eval_tasks="hellaswag, text:a.txt", init_from="nanogpt:out/ckpt.pt")
  defaults.validate(config)
  config.init_from = "nanogpt:"
  with pytest.raises(UserError, match="config.init_from='nanogpt:': must be one of"):
    defaults.validate(config)


def test_strided_text_perplexity_scores_each_token_once_after_its_window(tmp_path):
  """With a stride, windows overlap and each scores only its new tokens (at the default
  stride they are all of its targets): the loss is per token of the text, each once.

  The reference scores each row of text_rows(ids, block_size, stride) with the full
  forward pass and a plain cross-entropy over its last n targets."""
  config = float32_config(n_layer=1, n_head=2, n_embd=16, block_size=16,
                          vocab_size=tokenizer.N_VOCAB)
  model = GPT(GPTConfig.from_config(config))
  params = jax.tree.map(lambda p: 2.0 * p, init_params(model, jax.random.PRNGKey(1)))
  text_file = tmp_path / "book.txt"
  text_file.write_text(" ".join(WORDS * 3), encoding="utf-8")
  ids = tokenizer.gpt2().encode_ordinary(text_file.read_text(encoding="utf-8"))
  scorer = scoring.Scorer(model, rows_per_batch=4)
  stride = 5
  [task] = tasks.load(f"text:{text_file}", scorer, stride=stride)
  result = tasks.metrics(scorer, params, task)

  total = 0.0
  rows = tasks.text_rows(ids, config.block_size, stride)
  assert len(rows) > len(tasks.text_rows(ids, config.block_size))  # the windows overlap
  for row, n in rows:
    row = np.asarray(row)
    logits = model.apply({"params": params}, jnp.asarray(row[None, :-1]))[0]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    targets = row[1:]
    total += -float(np.sum(np.asarray(logp)[np.arange(len(targets)), targets][-n:]))
  assert result["tokens"] == len(ids) - 1
  assert result["loss"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)
  assert result["ppl"] == pytest.approx(math.exp(total / (len(ids) - 1)), rel=1e-5)


def test_eval_tasks_limit_limits_the_examples_the_loop_scores(tmp_path, token_dir):
  """The start checks the lines the loop reads, not the whole file (a line cut short after
  them: HellaSwag's 10,042 examples were tokenized at every start)."""
  hs = write_hellaswag(tmp_path / "hs.jsonl", 6)
  with open(hs, "a", encoding="utf-8") as f:
    f.write('{"ind": 6, "ctx": "cut')
  config = tiny_config(tmp_path, token_dir, max_iters=2, eval_interval=2, vocab_size=50304,
                       eval_tasks="hellaswag", eval_tasks_interval=2, eval_tasks_limit=2,
                       hellaswag_file=hs)
  launch.run(config)
  assert [r["hellaswag_examples"] for r in records(config.out_dir, "tasks")] == [2, 2]


def test_a_hellaswag_line_that_is_not_utf8_is_named_by_its_line(tmp_path):
  """Past the first 8 KB the decoder's offset was the chunk's, not the file's, and no line."""
  path = tmp_path / "hs.jsonl"
  write_hellaswag(path, 300)
  lines = path.read_bytes().splitlines(keepends=True)
  lines[249] = lines[249].replace(b'"ctx": "', b'"ctx": "caf\xe9 ', 1)
  path.write_bytes(b"".join(lines))
  with pytest.raises(UserError, match=r"hs.jsonl:250: not UTF-8"):
    hellaswag.read(str(path))
  assert len(hellaswag.read(str(path), limit=249)) == 249  # the lines --limit reads are fine


def test_a_hellaswag_file_with_a_byte_order_mark_or_bare_cr_line_ends_is_read(tmp_path):
  path = tmp_path / "hs.jsonl"
  write_hellaswag(path, 2)
  plain = hellaswag.read(str(path))
  path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
  assert hellaswag.read(str(path)) == plain
  path.write_bytes(path.read_bytes()[3:].replace(b"\n", b"\r"))  # old Mac line ends
  assert hellaswag.read(str(path)) == plain


def test_one_hellaswag_example_is_said_in_the_singular():
  line = tasks.describe("hellaswag", {"acc": 1.0, "acc_norm": 0.0, "examples": 1})
  assert "over 1 example (± one standard error" in line


def test_an_accuracy_s_standard_error_is_that_of_its_examples():
  """The ± of evaluate's and the run log's HellaSwag line: sqrt(p (1 - p) / n), what tells a
  real gain from noise (the slow tests alone read it)."""
  line = tasks.describe("hellaswag", {"acc": 0.3, "acc_norm": 0.4, "examples": 100})
  assert line.startswith("hellaswag: acc 0.3000 ± 0.0458, acc_norm 0.4000 ± 0.0490 over 100 "
                         "examples")


def test_a_hellaswag_line_nested_too_deep_is_one_user_error(tmp_path):
  path = tmp_path / "hs.jsonl"
  path.write_text("[" * 100_000 + "\n")
  with pytest.raises(UserError, match=r"hs.jsonl:1: not a HellaSwag example"):
    hellaswag.read(str(path))


def test_a_text_tasks_limit_keeps_its_first_windows(tmp_path):
  """evaluate --limit=N on text:FILE scores the first N windows, whole."""
  config = gpt2_vocab_config(n_layer=1, block_size=16)
  text_file = tmp_path / "book.txt"
  text_file.write_text(" ".join(WORDS * 2), encoding="utf-8")
  ids = tokenizer.gpt2().encode_ordinary(text_file.read_text(encoding="utf-8"))
  rows = tasks.text_rows(ids, config.block_size)
  assert len(rows) > 3
  model = GPT(GPTConfig.from_config(config))
  scorer = scoring.Scorer(model, rows_per_batch=4)
  [task] = tasks.load(f"text:{text_file}", scorer, limit=3)
  assert task.n_rows == 3 and task.about.startswith("3 windows")
  result = tasks.metrics(scorer, init_params(model, jax.random.PRNGKey(0)), task)
  assert result["tokens"] == sum(n for _, n in rows[:3])


def test_a_text_file_whose_name_holds_a_comma_is_one_task(tmp_path):
  """The list splits at a comma that starts a task: 'text:a,b.txt' is the file a,b.txt."""
  (tmp_path / "a,b.txt").write_text(" ".join(WORDS), encoding="utf-8")
  assert defaults.eval_tasks(f"text:{tmp_path}/a,b.txt, hellaswag") == [
      f"text:{tmp_path}/a,b.txt", "hellaswag"]
  tasks.check_files(f"text:{tmp_path}/a,b.txt")
  with pytest.raises(UserError, match=re.escape(
      f"text:{tmp_path}/a.txt,mmlu: no such file (a comma after text:FILE is part of its name")):
    tasks.check_files(f"text:{tmp_path}/a.txt,mmlu")
  with pytest.raises(UserError, match="unknown evaluation task 'mmlu'"):
    defaults.eval_tasks("hellaswag,mmlu")


@pytest.mark.parametrize("spec", ["text:a,,b.txt", "hellaswag,,text:a.txt", ",hellaswag"])
def test_an_empty_task_between_commas_is_refused(spec):
  """'text:a,,b.txt' was the file a,b.txt (the empty piece dropped, the next joined): two
  commas in a row are a typo or a name the list cannot hold, so said; a trailing comma is
  dropped."""
  with pytest.raises(UserError, match=r"^two commas in a row \(or a comma first\) leave an "
                                      "empty task"):
    defaults.eval_tasks(spec)
  assert defaults.eval_tasks("hellaswag, ") == ["hellaswag"]


def test_a_stride_past_the_weights_block_size_is_refused_before_they_load(tmp_path):
  """The weights' block_size is read from their config (here a Hugging Face config.json with
  no weights beside it): a stride past it is said before GPT-2's weights load or download."""
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps(
      {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 32,
       "vocab_size": tokenizer.N_VOCAB}), encoding="utf-8")
  text_file = tmp_path / "t.txt"
  text_file.write_text(" ".join(WORDS), encoding="utf-8")
  r = run_python("-m", "jaxgpt.evaluate", "--init_from=gpt2", f"--hf_checkpoint_dir={hf_dir}",
                 f"--task=text:{text_file}", "--stride=64")
  assert r.returncode == 1, r.stderr[-2000:]
  assert "error: stride=64: must be in 1..block_size=32" in r.stderr, r.stderr[-2000:]


# evaluate over a tiny model whose rows score 0 each: the rows are what the flags make, and a
# model's init and compile would be 2/3 of the command's time.
TINY_EVALUATE = """
import sys
import numpy as np
sys.path.insert(0, "tests")
from conftest import tiny_model
from jaxgpt import cli, evaluate
from jaxgpt.inference import scoring
from jaxgpt.interop import weights
from jaxgpt.model import GPT
model = GPT(tiny_model(vocab_size=50304))
weights.check_choice = lambda *a, **k: (50304, model.config.block_size)
weights.from_flags = lambda: (model.config, model, None, "a tiny model")
scoring.Scorer.loss_sums = lambda self, params, batches, n_rows, progress: np.zeros(n_rows)
evaluate._define_flags()
sys.argv[0] = "evaluate"
cli.run(evaluate.main)
"""


def test_evaluate_s_limit_and_stride_flags_reach_the_text_task(tmp_path):
  """`evaluate --task=text:F --limit=2 --stride=8` scores the first 2 windows of stride 8: the
  flags as tasks.load takes them (the slow tests alone ran the command)."""
  text_file = tmp_path / "book.txt"
  text_file.write_text(" ".join(WORDS * 2), encoding="utf-8")
  ids = tokenizer.gpt2().encode_ordinary(text_file.read_text(encoding="utf-8"))
  r = run_python("-c", TINY_EVALUATE, f"--task=text:{text_file}", "--limit=2", "--stride=8")
  assert r.returncode == 0, r.stderr[-2000:]
  rows = tasks.text_rows(ids, tiny_model().block_size, 8)
  assert len(rows) > 2 and rows[1][1] < tiny_model().block_size  # both flags change the count
  assert f" over {sum(n for _, n in rows[:2]):,} tokens [" in r.stdout, r.stdout


def test_a_task_s_flag_without_its_task_is_refused(tmp_path):
  """`evaluate --task=text:F --hellaswag_file=hs.jsonl` scores no HellaSwag, so it is refused
  at once: read by nothing, the flag let the user believe it was scored (a slow test alone
  held the stride's case)."""
  text_file = tmp_path / "book.txt"
  text_file.write_text(" ".join(WORDS), encoding="utf-8")
  hs = write_hellaswag(tmp_path / "hs.jsonl", 2)
  r = run_python("-m", "jaxgpt.evaluate", f"--task=text:{text_file}", f"--hellaswag_file={hs}")
  assert r.returncode == 1, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: --hellaswag_file is for --task=hellaswag, which --task='text:{text_file}' does "
      "not name")
