"""Corpus -> token shards: FineWeb parquet (local and through a stand-in hub), jsonl, txt."""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pydoc_data import topics

import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
  PYTHONPATH,
  ROOT,
  WORDS,
  alive,
  children,
  communicate_all,
  run_python,
  start_python,
  wait_for,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.hf_api import RepoFile

from jaxgpt import data, token_files, tokenizer
from jaxgpt.errors import UserError
from jaxgpt.prep import datasets, fineweb, readers, shards, tokenize

EOT = tokenizer.EOT_TOKEN

# Real English of every length (a few words to ~40 KB), plus text that tempts a tokenizer.
TEXTS = [topics.topics[k] for k in sorted(topics.topics)[:60]] + [
    "Ünïcödé, emoji 🙂 and CJK 日本語 text.", "A literal <|endoftext|> stays text.",
    "  leading and trailing spaces  ", "tabs\tand\r\nwindows\r\nnewlines\n\n\n"]


def expected_tokens(text: str) -> list[int]:
  return tokenizer.gpt2().encode_ordinary(text) + [EOT]


def fineweb_table(texts: list[str], start: int = 0) -> pa.Table:
  """Rows with FineWeb's columns and types."""
  n = len(texts)
  return pa.table({
      "text": texts,
      "id": [f"<urn:uuid:{start + i:08d}-0000-0000-0000-000000000000>" for i in range(n)],
      "dump": ["CC-MAIN-2013-20"] * n,
      "url": [f"http://example.com/{start + i}" for i in range(n)],
      "date": ["2013-05-18T05:48:54Z"] * n,
      "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2013-20/x.warc.gz"] * n,
      "language": ["en"] * n,
      "language_score": pa.array([0.9] * n, pa.float64()),
      "token_count": pa.array([len(tokenizer.gpt2().encode_ordinary(t)) for t in texts],
                              pa.int64()),
  })


def write_parquet(path, texts: list[str], start: int = 0) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(fineweb_table(texts, start), path, row_group_size=7)
  return str(path)


def split_tokens(out: str, split: str) -> list[np.ndarray]:
  return [token_files.read_tokens(p) for p in token_files.find_shards(out, split)]


def assert_dataset(out: str, docs: list[tuple[str, str]]) -> dict[str, list[str]]:
  """Checks the shards hold every document once, in order, in one split; returns the ids by split.

  Also reads every shard back through the trainer's reader: its windows are slices of
  the exact tokens.
  """
  meta = token_files.read_meta(out)
  streams = {s: np.concatenate(split_tokens(out, s)).tolist() for s in token_files.SPLITS}
  pos = {s: 0 for s in token_files.SPLITS}
  ids: dict[str, list[str]] = {s: [] for s in token_files.SPLITS}
  for doc_id, text in docs:
    want = expected_tokens(text)
    split = next(s for s in token_files.SPLITS if streams[s][pos[s]:pos[s] + len(want)] == want)
    pos[split] += len(want)
    ids[split].append(doc_id)
  for split in token_files.SPLITS:
    assert pos[split] == len(streams[split])  # nothing else in the shards
    assert meta["splits"][split] == {"tokens": pos[split], "documents": len(ids[split]),
                                     "shards": len(token_files.find_shards(out, split))}
    src = data.open_split(out, split, block_size=8, vocab_size=50304)
    files = split_tokens(out, split)
    first_file_windows = (len(files[0]) - 1) // 8
    for i in (0, first_file_windows - 1):
      np.testing.assert_array_equal(src[i], files[0][i * 8:i * 8 + 9])
  assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_token"] == EOT
  assert not os.path.exists(os.path.join(out, shards.STAGING))
  return ids


def run(inputs: list[str], out, **kwargs) -> dict:
  kwargs.setdefault("progress", False)
  return datasets.prepare_files(inputs, str(out), prefix="t", command="test", **kwargs)


def test_fineweb_parquet_files(tmp_path):
  a = write_parquet(tmp_path / "in" / "a.parquet", TEXTS[:40])
  write_parquet(tmp_path / "in" / "b.parquet", TEXTS[40:], start=40)
  meta = run([str(tmp_path / "in" / "*.parquet")], tmp_path / "out", shard_tokens=3000)
  ids = [f"<urn:uuid:{i:08d}-0000-0000-0000-000000000000>" for i in range(len(TEXTS))]
  by_split = assert_dataset(str(tmp_path / "out"), list(zip(ids, TEXTS)))
  # The split follows the hash of FineWeb's id column.
  assert by_split["val"] == [i for i in ids if shards.is_val(i, shards.VAL_FRACTION)]
  assert meta["splits"]["train"]["shards"] > 1
  assert meta["sources"] == [a, str(tmp_path / "in" / "b.parquet")]


def test_a_dataset_missing_a_shard_its_meta_json_lists_is_refused(tmp_path):
  """A copy cut short trained on the shards that were there, without a word."""
  write_parquet(tmp_path / "a.parquet", TEXTS)
  out = str(tmp_path / "out")
  meta = run([str(tmp_path / "a.parquet")], out, shard_tokens=3000)
  data.open_splits(out, 8, 50304)  # as written: opens
  last = token_files.find_shards(out, "train")[-1]
  lost = len(token_files.read_tokens(last))
  os.remove(last)
  train = meta["splits"]["train"]
  with pytest.raises(UserError, match=(
      rf"^{out}: its meta.json says the 'train' split was written as {train['shards']} files "
      rf"of {train['tokens']:,} tokens, and {train['shards'] - 1} files of "
      rf"{train['tokens'] - lost:,} are there \(a copy cut short")):
    data.open_splits(out, 8, 50304)


def test_a_dataset_s_meta_json_bounds_its_ids_without_reading_every_token(tmp_path,
                                                                         monkeypatch):
  """A start read every token of every file (20 GB at FineWeb-10B's size) to check the ids;
  the tokenizer that wrote them, recorded with these very files, bounds them already."""
  write_parquet(tmp_path / "a.parquet", TEXTS)
  out = str(tmp_path / "out")
  run([str(tmp_path / "a.parquet")], out, shard_tokens=3000)
  scanned = []
  check_vocab = token_files.check_vocab
  monkeypatch.setattr(token_files, "check_vocab",
                      lambda path, *args: scanned.append(path) or check_vocab(path, *args))
  data.open_splits(out, 8, 50304)
  assert scanned == []
  first = token_files.find_shards(out, "train")[0]
  with pytest.raises(token_files.ShardError, match=rf"^{first}: token id \d+ >= vocab_size 1000$"):
    data.open_splits(out, 8, 1000)  # a model smaller than the tokenizer: its ids are read
  os.remove(os.path.join(out, token_files.META_FILE))  # the shards alone: every one read
  scanned.clear()
  data.open_splits(out, 8, 50304)
  assert scanned == token_files.find_shards(out, "train") + token_files.find_shards(out, "val")


def test_jsonl_and_txt_files(tmp_path):
  (tmp_path / "a.jsonl").write_text(
      "".join(json.dumps({"id": f"j{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[:30])) +
      "\n", encoding="utf-8")
  (tmp_path / "txt").mkdir()
  for i, t in enumerate(TEXTS[30:50]):  # one document per file
    (tmp_path / "txt" / f"{i:02d}.txt").write_text(t, encoding="utf-8", newline="")
  run([str(tmp_path / "a.jsonl"), str(tmp_path / "txt" / "*.txt")], tmp_path / "out")
  docs = [(f"j{i}", t) for i, t in enumerate(TEXTS[:30])]
  docs += [(str(tmp_path / "txt" / f"{i:02d}.txt"), t) for i, t in enumerate(TEXTS[30:50])]
  assert_dataset(str(tmp_path / "out"), docs)


def test_extensions_are_matched_in_any_case(tmp_path):
  """BOOK.TXT, data.JSONL and x.Parquet were refused as of an unknown format."""
  (tmp_path / "BOOK.TXT").write_text("@@".join(TEXTS[:10]), encoding="utf-8", newline="")
  (tmp_path / "data.JSONL").write_text(
      "".join(json.dumps({"id": f"j{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[10:20])),
      encoding="utf-8")
  write_parquet(tmp_path / "x.Parquet", TEXTS[20:30], start=20)
  run([str(tmp_path / "BOOK.TXT"), str(tmp_path / "data.JSONL"), str(tmp_path / "x.Parquet")],
      tmp_path / "out", separator="@@")
  assert_dataset(str(tmp_path / "out"), [("", t) for t in TEXTS[:30]])


def test_a_flag_no_input_reads_is_refused(tmp_path):
  """--separator on jsonl alone, or --text_field on txt alone, did nothing, yet meta.json
  recorded it as part of the command; given to inputs of both kinds, each finds its files."""
  (tmp_path / "a.jsonl").write_text(
      "".join(json.dumps({"body": t}) + "\n" for t in TEXTS[:30]), encoding="utf-8")
  (tmp_path / "b.txt").write_text("@@".join(TEXTS[30:50]), encoding="utf-8")
  jsonl, txt = str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")
  with pytest.raises(UserError, match=r"^--separator='@@' splits .txt files, and --input "
                     "matches none"):
    run([jsonl], tmp_path / "o1", text_field="body", separator="@@")
  with pytest.raises(UserError, match=r"^--text_field=body names the text of parquet and jsonl "
                     "files, and --input matches only .txt files$"):
    run([txt], tmp_path / "o2", text_field="body", separator="@@")
  assert not os.path.exists(tmp_path / "o1") and not os.path.exists(tmp_path / "o2")
  run([txt], tmp_path / "o4", text_field="text", separator="@@")  # the default, as a script says
  meta = run([jsonl, txt], tmp_path / "o3", text_field="body", separator="@@")
  assert sum(split["documents"] for split in meta["splits"].values()) == 50


def test_null_ids_lone_surrogates_and_a_dot_named_out(tmp_path):
  """A null id names the document by its line (not all "None", one split); half an emoji
  tokenizes as tiktoken reads it; an out named .x still gives shards the trainer sees."""
  lines = [json.dumps({"id": None, "text": t}) for t in TEXTS[:30]]
  lines.append('{"id": "half", "text": "an emoji cut in half \\ud83d here"}')
  (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  out = tmp_path / ".x"
  datasets.prepare_files([str(tmp_path / "a.jsonl")], str(out), prefix=".x", command="test",
                         progress=False)
  ids = assert_dataset(str(out), [(f"a.jsonl:{i + 1}", t) for i, t in enumerate(TEXTS[:30])] +
                       [("half", "an emoji cut in half \ufffd here")])
  assert ids["val"] == [i for i in ids["train"] + ids["val"] if shards.is_val(i, 0.1)] != []
  assert os.path.basename(token_files.find_shards(str(out), "train")[0]) == "x_train_000000.bin"


def test_files_of_one_name_in_several_folders_are_documents_of_their_own(tmp_path):
  """A document without an id is named by its path below the inputs' common folder, so
  books/*/book.txt splits like any corpus (named by file name alone, all went to one split and
  the run was refused); a file name that is not UTF-8 is named by its bytes."""
  for i, text in enumerate(TEXTS[:40]):
    (tmp_path / "books" / str(i)).mkdir(parents=True)
    (tmp_path / "books" / str(i) / "book.txt").write_text(text, encoding="utf-8", newline="")
  latin1 = os.path.join(os.fsencode(tmp_path / "books" / "0"), b"caf\xe9.txt")
  with open(latin1, "w", encoding="utf-8") as f:
    f.write(TEXTS[40])
  run([str(tmp_path / "books" / "*" / "*.txt")], tmp_path / "out")
  cafe = os.fsdecode(os.path.join(b"0", b"caf\xe9.txt"))
  by_name = {f"{i}/book.txt": t for i, t in enumerate(TEXTS[:40])} | {cafe: TEXTS[40]}
  names = sorted(by_name)  # the order the glob reads them in
  ids = assert_dataset(str(tmp_path / "out"), [(n, by_name[n]) for n in names])
  assert ids["val"] == [n for n in names if shards.is_val(n, shards.VAL_FRACTION)] != []
  # A name depends on its own glob alone: another input never renames (and re-splits) these.
  (tmp_path / "extra.jsonl").write_text('{"text": "more"}\n', encoding="utf-8")
  named = readers.input_files([str(tmp_path / "books" / "*" / "*.txt"),
                               str(tmp_path / "extra.jsonl")])
  assert list(named.values()) == names + ["extra.jsonl"]
  latin1_jsonl = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jsonl")
  with open(latin1_jsonl, "w", encoding="utf-8") as f:
    f.write('{"text": "one"}\n')
  [piece] = readers.read_jsonl(os.fsdecode(latin1_jsonl), "text")
  assert piece.doc_id == os.fsdecode(b"caf\xe9.jsonl:1")  # its bytes, not U+FFFD


def test_txt_separator_and_jsonl_text_field(tmp_path):
  sep = "\n<doc>\n"
  (tmp_path / "book.txt").write_text(sep + sep.join(TEXTS) + sep, encoding="utf-8", newline="")
  run([str(tmp_path / "book.txt")], tmp_path / "out", separator=sep)
  assert_dataset(str(tmp_path / "out"), [("", t) for t in TEXTS])  # empty ends are no documents
  (tmp_path / "b.jsonl").write_text(
      "".join(json.dumps({"content": t}) + "\n" for t in TEXTS), encoding="utf-8")
  run([str(tmp_path / "b.jsonl")], tmp_path / "out2", text_field="content")
  assert_dataset(str(tmp_path / "out2"), [("", t) for t in TEXTS])


def test_an_existing_file_is_read_as_named_not_as_a_glob(tmp_path):
  """`run[1]/a.jsonl` is that file (as a glob it was run1/a.jsonl, or nothing), and its
  documents are named by its file name, as any file's."""
  for folder, texts in (("run[1]", TEXTS[:30]), ("run1", TEXTS[30:40])):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "a.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
  path = str(tmp_path / "run[1]" / "a.jsonl")
  assert readers.input_files([path]) == {path: "a.jsonl"}
  meta = run([path], tmp_path / "out")
  assert meta["sources"] == [path]
  assert_dataset(str(tmp_path / "out"), [(f"a.jsonl:{i}", t) for i, t in enumerate(TEXTS[:30], 1)])


def test_a_file_named_twice_is_read_once_and_said(tmp_path, monkeypatch, caplog):
  """A glob and a path of its own (spelled another way, a link to it, a hard link) name one
  file: its documents are not trained on twice, and a line says so (it was said nowhere, and a
  hard link was read twice)."""
  (tmp_path / "in").mkdir()
  for name in ("a.txt", "b.txt"):
    (tmp_path / "in" / name).write_text(name, encoding="utf-8")
  os.symlink(tmp_path / "in" / "a.txt", tmp_path / "link.txt")
  os.link(tmp_path / "in" / "b.txt", tmp_path / "hard.txt")
  monkeypatch.chdir(tmp_path)
  with caplog.at_level("WARNING", logger="absl"):
    assert readers.input_files(["in/*.txt", "./in/a.txt", "link.txt", "in/../in/b.txt",
                                "hard.txt", "in/a.txt"]) == {"in/a.txt": "a.txt",
                                                             "in/b.txt": "b.txt"}
  assert [r.getMessage() for r in caplog.records] == [
      "--input names in/a.txt 4 times (as ./in/a.txt, link.txt too): read once",
      "--input names in/b.txt 3 times (as in/../in/b.txt, hard.txt too): read once"]


@pytest.mark.parametrize("kind", ["large_string", "string_view", "dictionary"])
def test_parquet_text_of_any_string_type_is_read(tmp_path, kind):
  """pandas, polars and DuckDB write text as these types too: it is text, not refused."""
  texts = pa.array(TEXTS, pa.string() if kind == "dictionary" else getattr(pa, kind)())
  texts = texts.dictionary_encode() if kind == "dictionary" else texts
  path = tmp_path / "a.parquet"
  pq.write_table(pa.table({"text": texts}), path)
  assert pq.read_schema(path).field("text").type == texts.type  # stored as that type
  run([str(path)], tmp_path / "out")
  assert_dataset(str(tmp_path / "out"), [(f"a.parquet:{i}", t) for i, t in enumerate(TEXTS)])


def test_a_leading_bom_in_a_txt_file_is_no_tokens(tmp_path, monkeypatch):
  """Windows editors start a file with a BOM: it is dropped (read a byte at a time, as are the
  characters split across reads); a BOM inside the text is text and stays."""
  monkeypatch.setattr(readers, "READ_BYTES", 1)
  docs = [f"doc {i}: {TEXTS[-4 + i % 4]}" for i in range(40)]
  docs[1] = "mid\ufeffdle 🙂"
  (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbf" + "@@".join(docs).encode("utf-8"))
  run([str(tmp_path / "b.txt")], tmp_path / "out", separator="@@")
  assert_dataset(str(tmp_path / "out"), [(f"b.txt#{i}", t) for i, t in enumerate(docs)])
  split = "val" if shards.is_val("b.txt#0", shards.VAL_FRACTION) else "train"
  first = split_tokens(str(tmp_path / "out"), split)[0][:4].tolist()
  assert first == tokenizer.gpt2().encode_ordinary(docs[0])[:4]  # "doc 0: ...", no BOM token


def test_long_documents_are_tokenized_in_pieces_exactly(tmp_path, monkeypatch):
  monkeypatch.setattr(readers, "PIECE_CHARS", 50)
  monkeypatch.setattr(readers, "READ_BYTES", 37)
  monkeypatch.setattr(tokenize, "BATCH_CHARS", 300)
  enc = tokenizer.gpt2()
  rng = random.Random(0)
  alphabet = list("ab c\n\t'1.,!é🙂  ") + ["'s", "'ll", "\u00a0", "\u3000", "\x1c", "\x85",
                                          "\u2028", "\u200b", "\r\n"]
  for limit in (1, 3, 10):  # cut at nearly every safe space
    monkeypatch.setattr(readers, "PIECE_CHARS", limit)
    for _ in range(200):
      text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 100)))
      pieces = list(readers.pieces_of("d", text))
      assert "".join(p.text for p in pieces) == text and pieces[-1].last
      assert [t for p in pieces for t in enc.encode_ordinary(p.text)] == enc.encode_ordinary(text)
  monkeypatch.setattr(readers, "PIECE_CHARS", 50)
  (tmp_path / "x.txt").write_text("@@".join(TEXTS), encoding="utf-8", newline="")
  run([str(tmp_path / "x.txt")], tmp_path / "out", separator="@@")
  assert_dataset(str(tmp_path / "out"), [("", t) for t in TEXTS])


def test_text_is_never_cut_inside_a_separator_that_is_half_read(tmp_path, monkeypatch):
  monkeypatch.setattr(readers, "PIECE_CHARS", 4)
  monkeypatch.setattr(readers, "READ_BYTES", 13)  # the first read ends in "@@ @"
  path = tmp_path / "t.txt"
  path.write_text("abcdefghi@@ @@jk lm no pq@@ @@", encoding="utf-8")
  docs, text = [], ""
  for piece in readers.read_text(str(path), "@@ @@"):
    text += piece.text
    if piece.last:
      docs.append((piece.doc_id, text))
      text = ""
  assert docs == [("t.txt#0", "abcdefghi"), ("t.txt#1", "jk lm no pq")]


def test_text_without_spaces_is_searched_for_a_cut_once(tmp_path, monkeypatch):
  """A long document with no space to cut at (Chinese) is read in linear time: each read
  searches only the text it added, not the whole document so far again."""
  monkeypatch.setattr(readers, "PIECE_CHARS", 10)
  monkeypatch.setattr(readers, "READ_BYTES", 30)  # ten characters of three bytes a read
  searched = []

  class CountingCut:
    def search(self, text: str, pos: int, endpos: int = sys.maxsize):
      searched.append(min(endpos, len(text)) - pos)
      return _safe_cut.search(text, pos, endpos)

  _safe_cut = readers._SAFE_CUT
  monkeypatch.setattr(readers, "_SAFE_CUT", CountingCut())
  text = "\u4e2d\u6587" * 1500 + " a b c" + "\u5b57" * 300
  path = tmp_path / "zh.txt"
  path.write_text(text, encoding="utf-8")
  pieces = list(readers.read_text(str(path), ""))
  assert "".join(p.text for p in pieces) == text and len(pieces) > 1
  assert sum(searched) < 3 * len(text)  # once while reading, once more as the last piece


def test_text_without_a_separator_is_searched_for_one_once(tmp_path, monkeypatch):
  """A long document holding neither the separator nor a space is read in linear time: each
  read searches the separator only in the text it added (50 MB took minutes)."""
  monkeypatch.setattr(readers, "PIECE_CHARS", 10)
  monkeypatch.setattr(readers, "READ_BYTES", 30)
  searched = []
  split = readers._split

  def counting_split(text: str, separator: str, start: int) -> list[str]:
    searched.append(len(text) - start)
    return split(text, separator, start)

  monkeypatch.setattr(readers, "_split", counting_split)
  text = "x" * 3000 + "@@" + "y" * 3000 + "@" + "z" * 50
  path = tmp_path / "one_word.txt"
  path.write_text(text, encoding="utf-8")
  docs = [p.text for p in readers.read_text(str(path), "@@")]
  assert docs == ["x" * 3000, "y" * 3000 + "@" + "z" * 50]
  assert sum(searched) < 2 * len(text)


def test_workers_give_byte_identical_output(tmp_path, monkeypatch):
  monkeypatch.setattr(tokenize, "BATCH_CHARS", 2000)  # many batches in flight
  write_parquet(tmp_path / "a.parquet", TEXTS)
  for workers in (1, 2):
    run([str(tmp_path / "a.parquet")], tmp_path / f"out{workers}", workers=workers,
        shard_tokens=4000)
  names = sorted(os.listdir(tmp_path / "out1"))
  assert names == sorted(os.listdir(tmp_path / "out2")) and len(names) > 3
  for name in names:
    assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()


def test_val_split_is_a_fraction_of_documents_up_to_a_cap(tmp_path):
  docs = [(f"d{i}", f"Document number {i} says {'word ' * (i % 7)}.") for i in range(400)]
  path = tmp_path / "d.jsonl"
  path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
  run([str(path)], tmp_path / "out")
  by_split = assert_dataset(str(tmp_path / "out"), docs)
  want = [i for i, _ in docs if shards.is_val(i, 0.1)]
  assert by_split["val"] == want and 20 < len(want) < 60  # small corpus: 10% of it
  meta = run([str(path)], tmp_path / "capped", val_tokens=100)
  by_split = assert_dataset(str(tmp_path / "capped"), docs)
  assert 100 <= meta["splits"]["val"]["tokens"] < 100 + 20  # stops after the document that fills it
  assert by_split["val"] == want[:len(by_split["val"])]
  assert set(by_split["val"]).isdisjoint(by_split["train"])


def test_max_tokens_stops_after_the_document_that_reaches_it(tmp_path):
  write_parquet(tmp_path / "a.parquet", TEXTS)
  meta = run([str(tmp_path / "a.parquet")], tmp_path / "out", max_tokens=5000, val_fraction=0.5)
  total = sum(s["tokens"] for s in meta["splits"].values())
  n_docs = sum(s["documents"] for s in meta["splits"].values())
  lengths = np.cumsum([len(expected_tokens(t)) for t in TEXTS])
  assert total == lengths[n_docs - 1] and lengths[n_docs - 2] < 5000 <= total
  with pytest.raises(readers.PrepareError, match=r"a.parquet: no (val|train) documents among the "
                                                 r"1 that --max_tokens=1 let in \(val_fraction="
                                                 r"0.1\); raise --max_tokens"):
    run([str(tmp_path / "a.parquet")], tmp_path / "one", max_tokens=1)


def test_the_summary_under_max_tokens_counts_the_text_written(tmp_path, capsys):
  """Not the rest of the batch the cut fell in (here the whole corpus, 0.27 MB)."""
  write_parquet(tmp_path / "a.parquet", TEXTS)
  meta = run([str(tmp_path / "a.parquet")], tmp_path / "out", max_tokens=20000,
             val_fraction=0.5, progress=True)
  n_docs = sum(s["documents"] for s in meta["splits"].values())
  n_tokens = sum(s["tokens"] for s in meta["splits"].values())
  text_mb = sum(len(t.encode("utf-8")) for t in TEXTS[:n_docs]) / 1e6
  assert (f"{n_docs:,} documents, {text_mb:,.1f} MB of text, {n_tokens:,} tokens in "
          in capsys.readouterr().out)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_file_that_max_tokens_never_reaches_fails_no_run(tmp_path, workers):
  """Reading runs ahead of tokenizing (here, both files are one batch): a file past the cut
  failed the run, or not, by the number of workers and batches in flight."""
  write_parquet(tmp_path / "a.parquet", TEXTS)
  (tmp_path / "z.txt").write_bytes(b"text \xff")
  inputs = [str(tmp_path / "a.parquet"), str(tmp_path / "z.txt")]
  kwargs = {"max_tokens": 5000, "val_fraction": 0.5, "workers": workers}
  assert run(inputs, tmp_path / "cut", **kwargs) == run(inputs[:1], tmp_path / "one", **kwargs)
  with pytest.raises(readers.PrepareError, match=r"z.txt: not UTF-8 text \(byte 0xff at offset 5"):
    run(inputs, tmp_path / "all", **{**kwargs, "max_tokens": 0})
  assert not (tmp_path / "all").exists()


def test_meta_lists_only_the_sources_documents_came_from(tmp_path):
  """Reading runs ahead of tokenizing: b.parquet is read, but max_tokens stops in a.parquet."""
  a = write_parquet(tmp_path / "a.parquet", TEXTS[:30])
  write_parquet(tmp_path / "b.parquet", TEXTS[30:], start=30)
  meta = run([str(tmp_path / "*.parquet")], tmp_path / "out", max_tokens=10000,
             val_fraction=0.5)
  assert meta["sources"] == token_files.read_meta(str(tmp_path / "out"))["sources"] == [a]


# Bad input: an error that names the file.

@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_missing_text_column_names_the_file(tmp_path, kind):
  if kind == "parquet":
    path = str(tmp_path / "a.parquet")
    pq.write_table(fineweb_table(TEXTS[:3]).rename_columns(
        ["body"] + fineweb_table(TEXTS[:3]).column_names[1:]), path)
    match = f"{path}: no column 'text'"
  else:
    path = str(tmp_path / "a.jsonl")
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    match = f"{path}:2: no field 'text' \\(it has 'body'\\); set --text_field"
  with pytest.raises(readers.PrepareError, match=match):
    run([path], tmp_path / "out")


@pytest.mark.parametrize("name,content,match", [
    ("notes.csv", "a,b\n", "notes.csv: unknown format"),
    ("bad.txt", b"\xff\xfe text", "bad.txt: not UTF-8 text"),
    ("empty.jsonl", "", "empty.jsonl: no documents"),
    ("one.txt", "a single document", "one.txt: no (val|train) documents among 1"),
    ("broken.parquet", "not parquet", "broken.parquet: not a readable parquet file"),
    ("lines.jsonl", "{not json}\n", "lines.jsonl:1: not a JSON object"),
    ("latin.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "latin.jsonl:2: not UTF-8 text"),
    ("deep.jsonl", '{"text": "x", "id": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
     r"deep.jsonl:1: not a JSON object \(maximum recursion depth"),  # was a traceback
])
def test_bad_input_names_the_file(tmp_path, name, content, match):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(readers.PrepareError, match=match):
    run([str(path)], tmp_path / "new" / "out")
  assert os.listdir(tmp_path) == [name]  # the directories the run made are gone with it
  (tmp_path / "mine").mkdir()
  with pytest.raises(readers.PrepareError, match=match):
    run([str(path)], tmp_path / "mine")
  # A folder of one's own is left as it was: a lock file left there kept `rmdir` from it.
  assert os.listdir(tmp_path / "mine") == []


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_a_byte_that_is_not_utf8_is_named_by_its_offset_in_the_file(tmp_path, monkeypatch, bom):
  """Read in chunks (of 8 bytes here), a character split across two of them: the offset is the
  file's, not the chunk's."""
  monkeypatch.setattr(readers, "READ_BYTES", 8)
  path = tmp_path / "late.txt"
  path.write_bytes(bom + b"abcdefg" + "\u00e9".encode() + b"xyz\xffrest")
  with pytest.raises(readers.PrepareError, match=rf"late.txt: not UTF-8 text \(byte 0xff at "
                                                 rf"offset {len(bom) + 12}: invalid start byte"):
    list(readers.read_text(str(path), ""))


def test_parquet_text_that_is_not_utf8_names_the_file_and_row(tmp_path):
  """As in a .txt or .jsonl file (pyarrow's own error was a traceback)."""
  texts = [b"fine"] * 1500
  texts[1200] = b"caf\xe9"  # Latin-1
  path = tmp_path / "latin1.parquet"
  pq.write_table(pa.table({"text": pa.array(texts, pa.binary()).cast(pa.string(), safe=False)}),
                 path)
  with pytest.raises(readers.PrepareError, match=r"latin1.parquet: row 1200: 'text' is not "
                                                 r"UTF-8 text \('utf-8' codec can't decode"):
    run([str(path)], tmp_path / "out")
  assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="reads /proc")
def test_an_input_that_cannot_be_read_is_one_line_naming_it(tmp_path):
  """An I/O error (here /proc/self/mem's, read at offset 0: EIO, or a container's EPERM), or
  another user's file."""
  os.symlink("/proc/self/mem", tmp_path / "mem.txt")
  with pytest.raises(readers.PrepareError, match=r"mem.txt: cannot read it \("):
    run([str(tmp_path / "mem.txt")], tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_a_parquet_file_with_two_text_columns_is_refused_naming_it(tmp_path):
  path = tmp_path / "dup.parquet"
  pq.write_table(pa.Table.from_arrays([pa.array(["a b"] * 20), pa.array(["c d"] * 20)],
                                      names=["text", "text"]), path)
  with pytest.raises(readers.PrepareError, match="dup.parquet: 2 columns named 'text'"):
    run([str(path)], tmp_path / "out")


def test_a_staging_folder_holding_a_users_files_is_not_removed(tmp_path):
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  out = tmp_path / "out"
  (out / shards.STAGING).mkdir(parents=True)
  (out / shards.STAGING / "t_train_000000.bin.tmp12").write_bytes(b"a killed run's")
  (out / shards.STAGING / "mywork.txt").write_text("precious")
  with pytest.raises(readers.PrepareError, match=r"\.incomplete: holds files prepare does not "
                                                 r"write \(mywork.txt\)"):
    run([str(path)], out)
  assert (out / shards.STAGING / "mywork.txt").read_text() == "precious"
  (out / shards.STAGING / "mywork.txt").unlink()  # a killed run's files alone: removed
  run([str(path)], out)
  assert not (out / shards.STAGING).exists()
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / shards.STAGING).write_text("precious")
  with pytest.raises(readers.PrepareError, match=r"mine/\.incomplete: a file of its own"):
    run([str(path)], tmp_path / "mine")
  assert (tmp_path / "mine" / shards.STAGING).read_text() == "precious"
  (tmp_path / "linked").mkdir()
  (tmp_path / "linked" / shards.STAGING).symlink_to(tmp_path / "mine")  # a folder of the user's
  with pytest.raises(readers.PrepareError, match=r"linked/\.incomplete: a link of its own"):
    run([str(path)], tmp_path / "linked")
  assert (tmp_path / "mine" / shards.STAGING).read_text() == "precious"


def test_a_lock_file_of_the_users_is_refused_not_overwritten(tmp_path):
  """Where the lock goes, a file of the user's (or a link, whose file would be emptied) stays
  as it was; an earlier prepare's lock, its pid inside, is taken again."""
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / shards.LOCK_FILE).write_text("my notes")
  with pytest.raises(readers.PrepareError, match=r"^\S+mine/\.prepare\.lock: a file of its own "
                                                 r"\(it reads b'my notes'\), where prepare"):
    run([str(path)], tmp_path / "mine")
  assert os.listdir(tmp_path / "mine") == [shards.LOCK_FILE]
  assert (tmp_path / "mine" / shards.LOCK_FILE).read_text() == "my notes"
  (tmp_path / "linked").mkdir()
  (tmp_path / "linked" / shards.LOCK_FILE).symlink_to(tmp_path / "a.parquet")
  with pytest.raises(readers.PrepareError, match=r"linked/\.prepare\.lock: a link of its own"):
    run([str(path)], tmp_path / "linked")
  assert pq.read_table(path).num_rows == len(TEXTS)
  (tmp_path / "earlier").mkdir()
  (tmp_path / "earlier" / shards.LOCK_FILE).write_text("12345\n")
  run([str(path)], tmp_path / "earlier")
  assert (tmp_path / "earlier" / shards.LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_no_matching_files_names_the_glob(tmp_path):
  with pytest.raises(readers.PrepareError, match=r"--input=.*nothing/\*.txt: no files match"):
    run([str(tmp_path / "nothing" / "*.txt")], tmp_path / "out")
  with pytest.raises(readers.PrepareError, match=rf"--input={tmp_path}: a folder: give a glob, "
                                                 rf"e.g. --input='{tmp_path}/\*.txt'"):
    run([str(tmp_path)], tmp_path / "out")
  (tmp_path / "book.txt").symlink_to(tmp_path / "moved.txt")  # a link whose file moved
  with pytest.raises(readers.PrepareError, match=r"book.txt: a link to .*moved.txt, which is "
                                                 r"not there"):
    run([str(tmp_path / "book.txt")], tmp_path / "out")


# Output directories: nothing overwritten, nothing half-done that looks complete.

def test_the_built_in_corpus_into_a_prepared_dataset_is_refused_before_it_starts(tmp_path,
                                                                                 capsys):
  (tmp_path / "pd").mkdir()
  (tmp_path / "pd" / token_files.META_FILE).write_text("{}")
  with pytest.raises(readers.PrepareError, match="already holds a prepared dataset"):
    datasets.make_python_docs(str(tmp_path / "pd"))
  assert capsys.readouterr().out == ""  # no "tokenizing ..." line before the error


def test_a_finished_dataset_or_foreign_token_files_are_never_overwritten(tmp_path):
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  run([path], tmp_path / "out")
  before = {n: (tmp_path / "out" / n).read_bytes() for n in os.listdir(tmp_path / "out")}
  with pytest.raises(readers.PrepareError, match="meta.json: .* already holds a prepared dataset"):
    run([path], tmp_path / "out")
  assert before == {n: (tmp_path / "out" / n).read_bytes() for n in os.listdir(tmp_path / "out")}
  (tmp_path / "nano").mkdir()
  np.arange(100, dtype=np.uint16).tofile(tmp_path / "nano" / "train.bin")
  with pytest.raises(readers.PrepareError, match="train.bin.*choose an empty --out"):
    run([path], tmp_path / "nano")


def test_a_training_run_s_out_dir_is_refused_as_out(tmp_path):
  """Before, the shards went in beside the run's checkpoints, and launch.py then refused that
  run's resume ("out_dir ... holds token files")."""
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  for made in ("checkpoints", "metrics.jsonl"):
    out = tmp_path / made.replace(".", "_")
    out.mkdir()
    (out / made).mkdir() if made == "checkpoints" else (out / made).write_text("{}\n")
    with pytest.raises(readers.PrepareError, match=rf"^{out}: holds a training run \({made}\)"):
      run([path], out)
    assert os.listdir(out) == [made]


def test_an_out_another_prepare_is_writing_to_is_refused_at_once(tmp_path):
  """Before, the second prepare removed the first's staging folder as an earlier run's, and the
  first died in a traceback."""
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  out = tmp_path / "out"
  (out / shards.STAGING).mkdir(parents=True)
  (out / shards.STAGING / "t_train_000000.bin").write_bytes(b"the other prepare's")
  with open(out / ".prepare.lock", "w") as held:  # the lock a run making its data takes too
    held.write("4242\n")
    held.flush()
    fcntl.flock(held, fcntl.LOCK_EX)  # the other prepare, writing
    with pytest.raises(readers.PrepareError, match=rf"^{out}: another prepare is writing there "
                                                   r"\(pid 4242\); wait for it to end"):
      run([path], out)
  assert (out / shards.STAGING / "t_train_000000.bin").read_bytes() == b"the other prepare's"


def test_a_prepare_that_waited_locks_the_out_its_holder_made_again(tmp_path, monkeypatch):
  """A holder that fails removes the directory it made, lock file and all: one that waited on
  that file locks the one made anew (else a third would lock that one too)."""
  out = tmp_path / "out"
  out.mkdir()
  got: list[int | str] = []
  waiting = threading.Event()
  real_flock = fcntl.flock

  def flock(fd, operation):
    # The wait polls the old file opened already: whether or not it has tried again when the
    # file goes, it locks a file no longer in place.
    try:
      return real_flock(fd, operation)
    except BlockingIOError:
      waiting.set()
      raise

  def wait_then_lock() -> None:
    with shards.write_lock(str(out), wait=True), open(out / shards.LOCK_FILE) as third:
      try:
        fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
        got.append("a third prepare locked it too")
      except BlockingIOError:
        got.append(os.fstat(third.fileno()).st_ino)

  with open(out / shards.LOCK_FILE, "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    monkeypatch.setattr(fcntl, "flock", flock)
    waiter = threading.Thread(target=wait_then_lock)
    waiter.start()
    assert waiting.wait(timeout=60), "the second prepare never waited"
    os.remove(out / shards.LOCK_FILE)
    out.rmdir()
  waiter.join(timeout=30)
  assert got == [os.stat(out / shards.LOCK_FILE).st_ino]


def test_a_filesystem_without_locks_warns_a_prepare_and_refuses_a_run(tmp_path, monkeypatch,
                                                                      caplog):
  """A prepare (one process) writes there unguarded, with a warning; a run, whose processes
  would each make the data, is told to make it first."""
  def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(fcntl, "flock", no_locks)
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  with caplog.at_level("WARNING", logger="absl"):
    run([path], tmp_path / "out")
  assert "cannot lock it (No locks available); writing there unguarded" in caplog.text
  assert_dataset(str(tmp_path / "out"), [(f"<urn:uuid:{i:08d}", t) for i, t in enumerate(TEXTS)])
  (tmp_path / "a.jsonl").write_text("")
  with pytest.raises(readers.PrepareError, match="a.jsonl: no documents"):
    run([str(tmp_path / "a.jsonl")], tmp_path / "failed")
  assert not (tmp_path / "failed").exists()  # lock file and all
  with pytest.raises(UserError, match=r"cannot lock it to make the data there \(No locks "
                                      r"available\); make it first, from one process"):
    datasets.ensure("python_docs", str(tmp_path / "python_docs"), auto_prepare=False)


def test_an_interrupted_run_leaves_nothing_the_trainer_reads_and_reruns_cleanly(tmp_path):
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  out = tmp_path / "out"

  def crashing():
    for i, piece in enumerate(readers.read_parquet(path, "text")):
      if i == 40:
        raise KeyboardInterrupt
      yield piece

  with pytest.raises(KeyboardInterrupt):
    shards.write_dataset(crashing(), str(out), prefix="t", sources=[path], command="test",
                          shard_tokens=2000, progress=False)
  assert not out.exists()
  # A killed run (no cleanup) leaves its staging directory behind.
  (out / shards.STAGING).mkdir(parents=True)
  (out / shards.STAGING / "t_train_000000.bin").write_bytes(b"partial")
  # A run sees no shards there, so it would make the data, or say how:
  with pytest.raises(UserError, match=f"python -m jaxgpt.prepare fineweb --out={out}"):
    datasets.ensure("fineweb", str(out), auto_prepare=False)
  run([path], out)
  assert_dataset(str(out), [(f"<urn:uuid:{i:08d}", t) for i, t in enumerate(TEXTS)])


def test_a_stop_while_the_shards_move_in_takes_out_those_already_moved(tmp_path, monkeypatch):
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  out = tmp_path / "out"
  moves_in = []
  real_replace = os.replace

  def stopped_at_the_second_move_in(src, dst):
    if os.path.dirname(str(dst)) == str(out):
      moves_in.append(dst)
      if len(moves_in) == 2:
        raise KeyboardInterrupt
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", stopped_at_the_second_move_in)
  with pytest.raises(KeyboardInterrupt):
    run([path], out, shard_tokens=2000)
  monkeypatch.undo()
  assert not out.exists()  # the shard moved in first went with the rest
  run([path], out, shard_tokens=2000)
  assert_dataset(str(out), [(f"<urn:uuid:{i:08d}", t) for i, t in enumerate(TEXTS)])


def test_a_prepare_killed_while_the_shards_move_in_is_simply_run_again(tmp_path):
  """SIGKILL (the OOM killer) at the second shard moved in leaves one shard in out and no
  meta.json; the same command again takes out what that run moved in and makes the dataset.
  Before, it was refused ("holds token files without a meta.json")."""
  path = write_parquet(tmp_path / "a.parquet", TEXTS)
  out = tmp_path / "out"
  killed_at_the_second_move_in = f"""
import os, signal
from jaxgpt.prep import datasets
real_replace, moved = os.replace, []
def replace(src, dst):
  if os.path.dirname(str(dst)) == {str(out)!r} and str(dst).endswith(".bin"):
    moved.append(dst)
    if len(moved) == 2:
      os.kill(os.getpid(), signal.SIGKILL)
  real_replace(src, dst)
os.replace = replace
datasets.prepare_files([{path!r}], {str(out)!r}, prefix="t", command="test", shard_tokens=2000,
                       progress=False)
"""
  r = run_python("-c", killed_at_the_second_move_in, timeout=120)
  assert r.returncode == -signal.SIGKILL, r.stderr
  assert "t_train_000000.bin" in os.listdir(out) and not (out / "meta.json").exists()
  (out / "notes.txt").write_text("the user's")
  run([path], out, shard_tokens=2000)
  assert_dataset(str(out), [(f"<urn:uuid:{i:08d}", t) for i, t in enumerate(TEXTS)])
  assert (out / "notes.txt").read_text() == "the user's"


def test_a_corrupt_parquet_page_is_an_error_naming_the_file(tmp_path):
  path = tmp_path / "corrupt.parquet"
  pq.write_table(fineweb_table(TEXTS), path, row_group_size=7, compression="snappy")
  data_bytes = bytearray(path.read_bytes())
  data_bytes[200:5000] = bytes(b ^ 0xFF for b in data_bytes[200:5000])
  path.write_bytes(bytes(data_bytes))
  with pytest.raises(readers.PrepareError,
                     match=r"corrupt.parquet: the rows from row \d+ on are not readable"):
    run([str(path)], tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_a_prepare_stopped_while_moving_its_shards_in_is_not_read_as_the_dataset(tmp_path):
  out = tmp_path / "fineweb"
  (out / shards.STAGING).mkdir(parents=True)  # left by a stop between the moves and meta.json
  shards.write_shard(str(out / "fineweb_train_000000.bin"), np.arange(100, dtype=np.uint16))
  for dataset in ("fineweb", "python_docs"):  # python_docs: a run that makes its data itself
    with pytest.raises(UserError, match=rf"{out}: holds part of a dataset .*no meta.json.*"
                                        r"python -m jaxgpt.prepare"):
      datasets.ensure(dataset, str(out), auto_prepare=False)
  assert sorted(os.listdir(out)) == sorted([shards.STAGING, "fineweb_train_000000.bin",
                                            ".prepare.lock"])  # nothing removed


def killed_while_moving_in(out: pathlib.Path) -> pathlib.Path:
  """The state a SIGKILL leaves between two moves into `out`: its first shard moved in, its
  second still staged, both in the list. Returns the one moved in."""
  (out / shards.STAGING).mkdir(parents=True)
  moved = out / "python_docs_train_000000.bin"
  staged = out / shards.STAGING / "python_docs_val_000000.bin"
  for path in (moved, staged):
    shards.write_shard(str(path), np.arange(100, dtype=np.uint16))
  (out / shards.STAGING / shards.MOVING_IN).write_text(json.dumps(
      {path.name: shards._file_id(str(path)) for path in (moved, staged)}))
  return moved


def test_a_run_makes_again_the_python_docs_a_killed_prepare_was_moving_in(tmp_path, capsys):
  """The run's own prepare takes out the shard moved in, saying so, and makes the corpus (it
  said to remove the directory)."""
  out = tmp_path / "python_docs"
  moved = killed_while_moving_in(out)
  datasets.ensure("python_docs", str(out), auto_prepare=False)
  assert f"and the 1 shard it had moved in ({moved.name})" in capsys.readouterr().out
  meta = token_files.read_meta(str(out))
  assert sum(map(len, split_tokens(str(out), "train"))) == meta["splits"]["train"]["tokens"] > 100
  assert not (out / shards.STAGING).exists()


def test_a_file_put_since_under_a_name_a_killed_prepare_moved_in_is_kept(tmp_path):
  """Another file of the listed name (the user's, made some other way) is not the one the
  killed prepare moved: it stays, and the folder is refused as before."""
  out = tmp_path / "python_docs"
  moved = killed_while_moving_in(out)
  os.remove(moved)
  shards.write_shard(str(moved), np.full(100, 7, dtype=np.uint16))
  with pytest.raises(UserError, match="holds part of a dataset"):
    datasets.ensure("python_docs", str(out), auto_prepare=False)
  assert (token_files.read_tokens(str(moved)) == 7).all()


def test_the_command_to_make_a_half_moved_dataset_again_is_its_own(tmp_path):
  """python_docs is made by `prepare python_docs`, which takes --out alone, not by `prepare
  files --input=...` (that has no python_docs input)."""
  out = tmp_path / "pd"
  (out / shards.STAGING).mkdir(parents=True)
  shards.write_shard(str(out / "python_docs_train_000000.bin"), np.arange(100, dtype=np.uint16))
  with pytest.raises(UserError) as e:
    datasets.ensure("python_docs", str(out), auto_prepare=False)
  assert str(e.value).endswith(
      f"make the data again: python -m jaxgpt.prepare python_docs --out={shlex.quote(str(out))}")


def test_the_processes_of_one_run_make_a_missing_dataset_once(tmp_path):
  """Each process of a multi-process run calls ensure; one makes the data, the others wait
  for it (before, each removed the others' unfinished shards and all but one failed)."""
  data_dir = str(tmp_path / "python_docs")
  code = f"from jaxgpt.prep import datasets; datasets.ensure('python_docs', {data_dir!r}, " \
         "auto_prepare=False)"
  procs = [start_python("-c", code) for _ in range(2)]
  outputs = [out for out, _ in communicate_all(procs, 300)]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert sum("tokenizing the built-in python_docs corpus" in out for out in outputs) == 1
  assert data.open_splits(data_dir, 64, tokenizer.N_VOCAB)["val"].n_tokens > 0
  # Data nothing here can make is only named: no directory or lock is left for it.
  with pytest.raises(UserError, match="no token shards in data_dir="):
    datasets.ensure("openwebtext", str(tmp_path / "typo"), auto_prepare=False)
  assert not os.path.exists(tmp_path / "typo")


def test_the_built_in_corpus_never_stands_in_for_another_dataset(tmp_path):
  fineweb_dir = str(tmp_path / "fineweb")
  datasets.make_python_docs(fineweb_dir)  # prepare python_docs --out=.../fineweb
  made = sorted(os.listdir(fineweb_dir))
  with pytest.raises(UserError, match=(
      r"data_dir='.*fineweb' holds the built-in python_docs corpus, not dataset='fineweb' .*: "
      r"add --config.dataset=python_docs to train on it, or give fineweb's data another "
      r"--config.data_dir$")):
    datasets.ensure("fineweb", fineweb_dir, auto_prepare=True)  # nothing downloaded either
  assert sorted(os.listdir(fineweb_dir)) == made  # nothing moved
  datasets.ensure("python_docs", fineweb_dir, auto_prepare=False)  # still python_docs's data
  mine = tmp_path / "python_docs_mine"  # a user's data, named alike, is theirs
  datasets.prepare_files([write_parquet(tmp_path / "a.parquet", TEXTS)], str(mine),
                         prefix=mine.name, command="test", progress=False)
  datasets.ensure(mine.name, str(mine), auto_prepare=False)
  mine = tmp_path / "mine" / "python_docs"  # named the same (prepare names shards by --out)
  datasets.prepare_files([write_parquet(tmp_path / "a.parquet", TEXTS)], str(mine),
                         prefix=mine.name, command="python -m jaxgpt.prepare files", progress=False)
  datasets.ensure("shakespeare", str(mine), auto_prepare=False)


# FineWeb from the hub, served by a local stand-in.

@pytest.fixture
def hub(tmp_path, monkeypatch):
  """Three FineWeb-like parquet files per repo folder; records what is listed and downloaded."""
  root = tmp_path / "hub"
  calls: dict[str, list] = {"list": [], "download": []}
  for repo in fineweb.REPOS.values():
    for i, chunk in enumerate([TEXTS[:20], TEXTS[20:40], TEXTS[40:]]):
      write_parquet(root / repo / "sample" / "10BT" / f"{i:03d}_00000.parquet", chunk, 20 * i)

  def list_repo_tree(repo_id, path_in_repo=None, *, repo_type=None, revision=None):
    calls["list"].append((repo_id, path_in_repo, repo_type, revision))
    folder = root / repo_id / path_in_repo
    if not folder.is_dir():
      raise EntryNotFoundError(f"404: {path_in_repo}")
    return [RepoFile(path=f"{path_in_repo}/{n}", size=(folder / n).stat().st_size, oid="x")
            for n in sorted(os.listdir(folder), reverse=True)]

  def hf_hub_download(repo_id, filename, *, repo_type=None, revision=None):
    calls["download"].append((repo_id, filename, repo_type, revision))
    return str(root / repo_id / filename)

  monkeypatch.setattr(fineweb, "check_hub_reachable", lambda: None)
  monkeypatch.setattr(huggingface_hub, "dataset_info",
                      lambda repo_id: types.SimpleNamespace(sha=f"{len(repo_id):040x}"))
  monkeypatch.setattr(huggingface_hub, "list_repo_tree", list_repo_tree)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
  return calls


def test_fineweb_from_the_hub(tmp_path, hub):
  out = tmp_path / "fineweb"
  meta = fineweb.prepare_fineweb(str(out), shards_limit=2, prefix="fineweb", command="test",
                                 progress=False)
  # One revision, the dataset's when the download starts, for the list and every file: a
  # release on main during the hours of a download mixed two.
  sha = f"{len('HuggingFaceFW/fineweb'):040x}"
  assert hub["list"] == [("HuggingFaceFW/fineweb", "sample/10BT", "dataset", sha)]
  assert [d[1::2] for d in hub["download"]] == [("sample/10BT/000_00000.parquet", sha),
                                                ("sample/10BT/001_00000.parquet", sha)]
  assert meta["sources"] == [
      f"hf://datasets/HuggingFaceFW/fineweb@{sha}/sample/10BT/000_00000.parquet",
      f"hf://datasets/HuggingFaceFW/fineweb@{sha}/sample/10BT/001_00000.parquet"]
  assert_dataset(str(out), [(str(i), t) for i, t in enumerate(TEXTS[:40])])


def test_fineweb_from_a_hub_that_names_no_revision_says_main(tmp_path, hub, monkeypatch):
  """A mirror's dataset info may hold no sha: the files are main's, and meta.json says so."""
  monkeypatch.setattr(huggingface_hub, "dataset_info",
                      lambda repo_id: types.SimpleNamespace(sha=None))
  meta = fineweb.prepare_fineweb(str(tmp_path / "fw"), shards_limit=2, prefix="fw", command="test",
                                 progress=False)
  assert {hub["list"][0][3]} | {d[3] for d in hub["download"]} == {"main"}
  assert meta["sources"][0] == (
      "hf://datasets/HuggingFaceFW/fineweb@main/sample/10BT/000_00000.parquet")


def test_fineweb_edu_with_max_tokens_downloads_only_what_it_needs(tmp_path, hub, monkeypatch):
  monkeypatch.setattr(tokenize, "BATCH_CHARS", 2000)  # reading runs a batch ahead of tokenizing
  fineweb.prepare_fineweb(str(tmp_path / "edu"), edu=True, max_tokens=10000, val_fraction=0.5,
                          prefix="edu", command="test", progress=False)
  assert [d[:3] for d in hub["download"]] == [("HuggingFaceFW/fineweb-edu",
                                               "sample/10BT/000_00000.parquet", "dataset")]


def test_fineweb_names(tmp_path, hub):
  assert fineweb.fineweb_folder("sample-100BT") == "sample/100BT"
  assert fineweb.fineweb_folder("CC-MAIN-2013-20") == "data/CC-MAIN-2013-20"
  with pytest.raises(readers.PrepareError, match="--name=10BT: expected a sample"):
    fineweb.fineweb_folder("10BT")
  with pytest.raises(readers.PrepareError, match="fineweb/data/CC-MAIN-2013-20: not found"):
    fineweb.prepare_fineweb(str(tmp_path / "x"), subset="CC-MAIN-2013-20", prefix="x",
                            command="test", progress=False)


@pytest.mark.parametrize("trouble", ["listing", "listing_cut", "download", "download_cut",
                                     "xet_cut"])
def test_trouble_at_the_hub_is_one_line_naming_the_file(tmp_path, hub, monkeypatch, trouble):
  """A server error, a connection cut, a file neither on the hub nor in the cache: before, each
  was a traceback (only "not found" and "offline at the start" were caught)."""
  httpx2 = pytest.importorskip("httpx2", reason="the HTTP library of huggingface_hub 2")
  request = httpx2.Request("GET", "https://huggingface.co/api/datasets/x")
  server_error = HfHubHTTPError("500 Server Error: Internal Server Error for url: "
                                "https://huggingface.co/api/datasets/x\n\n(details)",
                                response=httpx2.Response(500, request=request))
  listed, downloaded = huggingface_hub.list_repo_tree, huggingface_hub.hf_hub_download

  def list_repo_tree(*args, **kwargs):
    if trouble == "listing":
      raise server_error
    entries = listed(*args, **kwargs)
    yield entries[0]  # the hub lists a page at a time
    raise httpx2.ReadError("peer closed connection")

  def hf_hub_download(repo_id, filename, **kwargs):
    if filename.endswith("001_00000.parquet") and trouble == "xet_cut":  # hf_xet's own error
      raise RuntimeError("Data processing error: CAS service error : Reqwest Error: error "
                         "decoding response body")
    if filename.endswith("001_00000.parquet"):
      raise (LocalEntryNotFoundError("An error happened while trying to locate the file on the "
                                     "Hub and we cannot find the requested files in the local "
                                     "cache.") if trouble == "download" else
             httpx2.RemoteProtocolError("peer closed connection without sending complete "
                                        "message body"))
    return downloaded(repo_id, filename, **kwargs)

  if trouble.startswith("listing"):
    monkeypatch.setattr(huggingface_hub, "list_repo_tree", list_repo_tree)
  else:
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
  monkeypatch.setattr(tokenize, "BATCH_CHARS", 2000)  # the first file is tokenized first
  path = "sample/10BT" if trouble.startswith("listing") else "sample/10BT/001_00000.parquet"
  what = {"listing": "500 Server Error: Internal Server Error for url: .*/datasets/x",
          "listing_cut": "peer closed connection",
          "download": "An error happened while trying to locate the file on the Hub",
          "download_cut": "peer closed connection without sending complete message body",
          "xet_cut": "Data processing error: CAS service error"}
  with pytest.raises(readers.PrepareError, match=(
      rf"^hf://datasets/HuggingFaceFW/fineweb/{path}: {what[trouble]}[^\n]*; run the same "
      r"command again \(finished files are cached\)$")):
    fineweb.prepare_fineweb(str(tmp_path / "fw"), prefix="fw", command="test", progress=False)
  assert not (tmp_path / "fw").exists()


# The trainer's side.

def test_trainer_makes_fineweb_itself_when_allowed(tmp_path, hub):
  fw = str(tmp_path / "fw")
  with pytest.raises(UserError, match="auto_prepare=True"):
    datasets.make("fineweb", fw, auto_prepare=False)
  datasets.make("fineweb", fw, auto_prepare=True)
  sources = data.open_splits(fw, block_size=16, vocab_size=50304)
  assert len(hub["download"]) == 3 and len(sources["train"]) > len(sources["val"]) > 0
  assert token_files.read_meta(str(tmp_path / "fw"))["command"] == (
      f"python -m jaxgpt.prepare fineweb --out={tmp_path / 'fw'}")


def test_a_run_whose_fineweb_download_fails_leaves_no_folder_behind(tmp_path, hub, monkeypatch):
  """ensure holds the lock through the download: the folder its lock made goes with it."""
  def offline(*args, **kwargs):
    raise readers.PrepareError("hf://datasets/HuggingFaceFW/fineweb: the hub is unreachable")

  monkeypatch.setattr(fineweb, "prepare_fineweb", offline)
  fw = tmp_path / "new" / "fw"
  with pytest.raises(readers.PrepareError, match="unreachable"):
    datasets.ensure("fineweb", str(fw), auto_prepare=True)
  assert not (tmp_path / "new").exists()  # nor the folder made above it


# The command line.

def prepare_cli(*args: str) -> subprocess.CompletedProcess:
  return run_python("-m", "jaxgpt.prepare", *args, timeout=120)


def test_command_line(tmp_path):
  (tmp_path / "book.txt").write_text("\n<doc>\n".join(TEXTS), encoding="utf-8", newline="")
  args = ["files", f"--input={tmp_path / 'book.txt'}", "--separator=\\n<doc>\\n",
          f"--out={tmp_path / 'book'}", "--workers=1000"]
  r = prepare_cli(*args)
  assert r.returncode == 0, r.stderr
  assert f"--workers=1000: {tokenize.cpu_count()}, the cores this process may use" in r.stderr
  assert "MB/s" in r.stdout and "tokens/s per worker" in r.stdout
  output = r.stdout + r.stderr
  assert output.count("MB/s of text") == 1 and output.count("MB/s") == 2  # total, per worker
  assert "tokenizing:" not in output  # no progress bar off a terminal
  meta = token_files.read_meta(str(tmp_path / "book"))
  assert meta["command"] == "python -m jaxgpt.prepare " + " ".join(
      a if "\\" not in a else f"'{a}'" for a in args)
  assert os.path.basename(token_files.find_shards(str(tmp_path / "book"), "train")[0]) == (
      "book_train_000000.bin")
  assert sum(s["documents"] for s in meta["splits"].values()) == len(TEXTS)
  r = prepare_cli(*args)
  assert r.returncode == 1 and "already holds a prepared dataset" in r.stderr
  r = prepare_cli("files", "--shards=2", f"--input={tmp_path / 'book.txt'}",
                  f"--out={tmp_path / 'x'}")
  assert r.returncode != 0 and "--shards applies to `fineweb`" in r.stderr
  r = prepare_cli("files", f"--input={tmp_path / 'book.txt'}", f"--out={tmp_path / 'big'}",
                  "--shard_tokens=2147483648")  # one train.bin of 10B tokens, say
  assert r.returncode == 1 and "error: --shard_tokens=2147483648: 2147483648 is not an " \
                               "integer in the range [1, 2147483647]" in r.stderr
  r = prepare_cli("files", f"--input={tmp_path / 'book.txt'}", f"--out={tmp_path / 'nv'}",
                  "--val_fraction=0")  # was refused only after the whole corpus was tokenized
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
      "error: --val_fraction=0.0: must be above 0: a run evaluates on val documents")
  r = prepare_cli("files", f"--input={tmp_path / 'book.txt'}", f"--out={tmp_path / 'nt'}",
                  "--val_fraction=1", "--val_tokens=0")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
      "error: --val_fraction=1 with --val_tokens=0 (no cap) puts every document in val, none in "
      "train; lower --val_fraction or cap --val_tokens")
  assert not (tmp_path / "nt").exists()
  r = prepare_cli("python_docs", "--val_fraction=0.2", f"--out={tmp_path / 'pd'}")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
      "error: --val_fraction does not apply to `python_docs`: the built-in corpus is made one "
      "way, as a run makes it")
  assert not (tmp_path / "pd").exists()
  r = prepare_cli("files", f"--input={tmp_path / 'book.txt'}", "--out=")
  assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
      "error: --out=: names no file or folder")
  r = prepare_cli()  # asked for --out before saying what to prepare
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      "error: name one of fineweb, files, python_docs"]
  r = prepare_cli("--helpfull")  # --help names it: absl's page of every flag (its exit 1)
  assert "--val_fraction" in r.stdout and "error:" not in r.stderr, r.stderr


def test_max_tokens_takes_a_count_as_plan_s_train_tokens_does(tmp_path):
  """`--max_tokens=500M` and `5e8` were refused ("not an integer"), though plan took `3.68B`."""
  (tmp_path / "book.txt").write_text("\n<doc>\n".join(TEXTS), encoding="utf-8", newline="")
  book = ["files", f"--input={tmp_path / 'book.txt'}", "--separator=\\n<doc>\\n", "--workers=1"]
  r = prepare_cli(*book, f"--out={tmp_path / 'cut'}", "--max_tokens=5e3",
                  "--val_fraction=0.5")
  assert r.returncode == 0, r.stderr
  splits = token_files.read_meta(str(tmp_path / "cut"))["splits"]
  assert 5000 <= sum(s["tokens"] for s in splits.values()) < 20000
  for value, why in (("lots", "'lots' is not a count (e.g. 3.68B, 500M, 10000000000)"),
                     ("-1K", "-1000 is not a non-negative integer")):
    r = prepare_cli(*book, f"--out={tmp_path / 'no'}", f"--max_tokens={value}")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"error: --max_tokens={value}: {why}")


def test_the_split_and_shard_flags_make_the_dataset_the_library_makes(tmp_path):
  """--val_fraction, --val_tokens and --shard_tokens each reach the dataset: one the command
  did not hand on was ignored (exit 0, the defaults' split and shards), though meta.json's
  command named it."""
  (tmp_path / "book.txt").write_text("\n<doc>\n".join(TEXTS), encoding="utf-8", newline="")
  given = {"val_fraction": 0.5, "val_tokens": 1000, "shard_tokens": 2000}
  r = prepare_cli("files", f"--input={tmp_path / 'book.txt'}", "--separator=\\n<doc>\\n",
                  f"--out={tmp_path / 'cli'}", "--workers=1",
                  *(f"--{name}={value}" for name, value in given.items()))
  assert r.returncode == 0, r.stderr
  meta = run([str(tmp_path / "book.txt")], tmp_path / "lib", separator="\n<doc>\n", **given)
  assert token_files.read_meta(str(tmp_path / "cli"))["splits"] == meta["splits"]
  assert meta["splits"]["train"]["shards"] > 1
  for split in token_files.SPLITS:
    assert np.array_equal(np.concatenate(split_tokens(str(tmp_path / "cli"), split)),
                          np.concatenate(split_tokens(str(tmp_path / "lib"), split)))


def test_input_repeated_reads_every_one(tmp_path):
  """A second --input replaced the first: part of the corpus, exit 0, and no word of it."""
  half = len(TEXTS) // 2
  for name, texts in (("a.txt", TEXTS[:half]), ("b.txt", TEXTS[half:])):
    (tmp_path / name).write_text("\n<doc>\n".join(texts), encoding="utf-8", newline="")
  r = prepare_cli("files", f"--input={tmp_path / 'a.txt'}", f"--input={tmp_path / 'b.txt'}",
                  "--separator=\\n<doc>\\n", f"--out={tmp_path / 'ab'}", "--workers=1")
  assert r.returncode == 0, r.stderr
  meta = token_files.read_meta(str(tmp_path / "ab"))
  assert sum(s["documents"] for s in meta["splits"].values()) == len(TEXTS)


def test_an_out_given_as_tilde_is_the_home_directory(tmp_path):
  (tmp_path / "book.txt").write_text("\n<doc>\n".join(TEXTS), encoding="utf-8", newline="")
  r = run_python("-m", "jaxgpt.prepare", "files", f"--input={tmp_path / 'book.txt'}",
                 "--separator=\\n<doc>\\n", "--out=~/data/book", timeout=120,
                 HOME=str(tmp_path))
  assert r.returncode == 0, r.stderr
  assert f"wrote {tmp_path / 'data' / 'book'}:" in r.stdout
  assert token_files.read_meta(str(tmp_path / "data" / "book")) is not None


def test_fineweb_without_a_network_fails_at_once_saying_what_to_do(tmp_path):
  started = time.perf_counter()
  r = run_python("-m", "jaxgpt.prepare", "fineweb", f"--out={tmp_path / 'fw'}",
                 HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there
  assert r.returncode == 1 and time.perf_counter() - started < 30
  assert "error: the Hugging Face Hub (http://127.0.0.1:9) is unreachable" in r.stderr
  assert "prepare files --input=" in r.stderr and "Traceback" not in r.stderr
  assert not (tmp_path / "fw").exists()


def test_a_full_disk_is_one_error_line(tmp_path):
  """A shard that cannot be written (no space, or here a file-size limit) names itself, and
  the run takes out what it wrote."""
  (tmp_path / "book.txt").write_text("\n<doc>\n".join(TEXTS), encoding="utf-8", newline="")
  out = tmp_path / "big"
  r = subprocess.run(
      ["bash", "-c", 'ulimit -f 64 && exec "$0" "$@"', sys.executable, "-m", "jaxgpt.prepare",
       "files", f"--input={tmp_path / 'book.txt'}", "--separator=\\n<doc>\\n", f"--out={out}"],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH),
      capture_output=True, text=True, timeout=120, check=False)
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: {out}/{shards.STAGING}/big_train_000000.bin: cannot write it (File too large)")
  assert not out.exists()


# The tokenizer workers of a prepare the test can stop: each takes a second a batch, as those
# of a large corpus would, so the main process waits on them.
SLOW_PREPARE = """
import runpy
import time

from jaxgpt.prep import tokenize

fast = tokenize.encode_pieces


def encode_pieces(texts, lasts):
  time.sleep(1)
  return fast(texts, lasts)


def main():
  tokenize.encode_pieces, tokenize.BATCH_CHARS = encode_pieces, 1000
  runpy.run_module("jaxgpt.prepare", run_name="__main__")
"""


def start_slow_prepare(tmp_path, **popen) -> tuple[subprocess.Popen, list[str], Callable]:
  """A prepare of TEXTS by two slow workers, in the background; its arguments (but --workers),
  and a function giving its workers' pids."""
  (tmp_path / "slow_prepare.py").write_text(SLOW_PREPARE)
  (tmp_path / "book.txt").write_text("\n<doc>\n".join(TEXTS), encoding="utf-8", newline="")
  args = ["files", f"--input={tmp_path / 'book.txt'}", "--separator=\\n<doc>\\n",
          f"--out={tmp_path / 'out'}"]
  proc = start_python("-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
                      "import slow_prepare; slow_prepare.main()", *args, "--workers=2", **popen)

  def workers() -> list[int]:
    return [pid for pid, cmdline in children(proc.pid).items() if b"spawn_main" in cmdline]

  return proc, args, workers


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_or_killed_prepare_leaves_no_worker_running(tmp_path, sig):
  """SIGTERM stops a prepare as Ctrl-C does, in one line; killed outright, its workers end with
  it. Before, either left the tokenizer processes running for ever. While it runs, a second
  prepare into its --out is refused, naming it."""
  out = tmp_path / "out"
  proc, args, workers = start_slow_prepare(tmp_path)
  try:
    wait_for(lambda: len(workers()) == 2, 120, "the two tokenizer workers")
    tokenizing = workers()
    if sig == signal.SIGTERM:
      r = run_python("-m", "jaxgpt.prepare", *args, timeout=120)
      assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
          f"error: {out}: another prepare is writing there (pid {proc.pid}); wait for it to "
          "end, or choose another --out"), r.stderr
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0]
  finally:
    proc.kill()
  wait_for(lambda: not any(map(alive, tokenizing)), 10, "the workers to end")
  if sig == signal.SIGTERM:
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert output.strip().splitlines()[-1] == (
        f"stopped by SIGTERM: nothing of this run is left in {out}")
    assert "Traceback" not in output and not out.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_tokenizer_worker_killed_ends_the_prepare_in_one_line(tmp_path):
  """The OOM killer takes a worker: the prepare stops with an error, nothing kept, and no worker
  left (the pool's own cleanup signalled the others with SIGTERM, which they ignore, and waited
  for ever)."""
  proc, _, workers = start_slow_prepare(tmp_path)
  try:
    wait_for(lambda: len(workers()) == 2, 120, "the two tokenizer workers")
    tokenizing = workers()
    os.kill(tokenizing[0], signal.SIGKILL)
    output = proc.communicate(timeout=60)[0]
  finally:
    proc.kill()
  wait_for(lambda: not any(map(alive, tokenizing)), 10, "the workers to end")
  assert proc.returncode == 1 and "Traceback" not in output, output
  assert output.strip().splitlines()[-1] == (
      "error: a tokenizer process ended abruptly (out of memory?); nothing was kept: run the "
      "command again, with fewer --workers")
  assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_second_ctrl_c_while_the_workers_finish_still_ends_the_prepare(tmp_path):
  """A terminal's Ctrl-C twice in quick succession: the second came while the pool waited for
  the batches in flight, and the exit then waited for the workers for ever."""
  proc, _, workers = start_slow_prepare(tmp_path, start_new_session=True)
  try:
    wait_for(lambda: len(workers()) == 2, 120, "the two tokenizer workers")
    time.sleep(1)  # both workers busy with a batch
    os.killpg(proc.pid, signal.SIGINT)  # to the whole group, as a terminal sends it
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
  finally:
    with contextlib.suppress(ProcessLookupError):  # the group's processes all ended
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130 and "Traceback" not in output, output
  assert not (tmp_path / "out").exists()


def test_a_ctrl_c_another_thread_takes_still_ends_a_wait_for_the_lock(tmp_path, monkeypatch):
  """The kernel hands a process's SIGINT to any of its threads (JAX runs several): where not the
  waiting one, a blocking flock went on waiting for ever after the stop."""
  monkeypatch.setattr(shards, "LOCK_POLL_S", 0.05)
  out = tmp_path / "pd"
  out.mkdir()
  with open(out / shards.LOCK_FILE, "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)  # another process is making the data
    ctrl_c = threading.Timer(0.5, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT))
    ctrl_c.start()
    # A stop that never ends the wait fails the test at the lock's release, not never.
    release = threading.Timer(60, fcntl.flock, (held, fcntl.LOCK_UN))
    release.start()
    started = time.monotonic()
    try:
      with pytest.raises(KeyboardInterrupt), shards.write_lock(str(out), wait=True):
        pass
    finally:
      release.cancel()
    assert time.monotonic() - started < 5


def test_the_built_in_corpus_is_not_made_into_a_folder_of_ones_own_files(tmp_path):
  """A quickstart run with --config.data_dir at a folder of raw text wrote python_docs' shards
  into it, and trained on them."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text("my text")
  with pytest.raises(UserError, match=r"corpus holds files of its own \(a.txt\): the built-in "
                                      r"python_docs corpus is made only in a new or empty "
                                      r"folder. .*prepare files --input='.*corpus/\*.txt'"):
    datasets.ensure("python_docs", str(corpus), auto_prepare=False)
  assert os.listdir(corpus) == ["a.txt"]


def test_a_run_makes_the_built_in_corpus_only_in_a_folder_named_for_it(tmp_path):
  """A quickstart run whose data_dir was mistyped (or meant one's own data) made python_docs
  there and trained on it, one log line saying so; `prepare python_docs --out` still makes it
  anywhere."""
  typo = tmp_path / "data" / "pyhton_docs"
  with pytest.raises(UserError, match=(
      rf"^no token shards in data_dir='{typo}': a run makes the built-in python_docs corpus "
      r"only in a folder named python_docs \(the default: data/python_docs\); check the path, "
      rf"or make it there first: python -m jaxgpt.prepare python_docs --out={typo}$")):
    datasets.ensure("python_docs", str(typo), auto_prepare=False)
  assert not (tmp_path / "data").exists()
  datasets.make_python_docs(str(typo))
  datasets.ensure("python_docs", str(typo), auto_prepare=False)  # made: read where it is


def test_a_document_stays_in_one_split_when_the_val_cap_fills_inside_it(tmp_path,
                                                                       monkeypatch):
  """A long document is tokenized in pieces, and the val cap may fill in the middle of one:
  its split is the document's, so its rest goes on to val, not to train."""
  monkeypatch.setattr(readers, "PIECE_CHARS", 40)
  docs = [(f"d{i}", f"Document {i}: " + " ".join(WORDS[(i + j) % len(WORDS)]
                                                  for j in range(60)))
          for i in range(40)]
  assert all(len(list(readers.pieces_of(i, t))) > 5 for i, t in docs)
  path = tmp_path / "d.jsonl"
  path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
  meta = run([str(path)], tmp_path / "out", val_fraction=0.5, val_tokens=30)
  by_split = assert_dataset(str(tmp_path / "out"), docs)  # each document whole, in one split
  assert len(by_split["val"]) == 1 and meta["splits"]["val"]["tokens"] > 30
  assert token_files.read_meta(str(tmp_path / "out"))["splits"] == meta["splits"]


def test_a_split_with_other_tokens_than_its_meta_json_says_is_refused(token_dir):
  """One shard replaced by a shorter one: as many files as meta.json lists, fewer tokens."""
  with open(f"{token_dir}/meta.json", "w") as f:
    json.dump({"vocab_size": 50257, "splits": {"train": {"shards": 2, "tokens": 6000},
                                               "val": {"shards": 1, "tokens": 1000}}}, f)
  with pytest.raises(UserError, match="written as 2 files of 6,000 tokens, and 2 files of 5,000 "
                                      "are there"):
    data.open_splits(token_dir, 8, 96)


@pytest.mark.parametrize("splits", [["train", "val"], "train,val", {"train": 5}])
def test_a_meta_json_whose_splits_hold_no_counts_checks_nothing(token_dir, splits):
  """Another tool's meta.json (its splits a list, say) records no counts to check: the shards
  open as where there is none, not with an AttributeError's traceback."""
  with open(f"{token_dir}/meta.json", "w") as f:
    json.dump({"splits": splits}, f)
  windows = data.open_splits(token_dir, 8, 96)
  assert sorted(windows) == ["train", "val"]


def test_empty_rows_and_records_are_no_documents(tmp_path):
  """An empty text (a parquet row, a jsonl record) adds no document: no lone end-of-text
  token, nor a document count that is not the corpus', as .txt's empty ends."""
  texts = [t if i % 3 else "" for i, t in enumerate(TEXTS)]
  pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet")
  meta = run([str(tmp_path / "a.parquet")], tmp_path / "out")
  assert_dataset(str(tmp_path / "out"),
                 [(f"a.parquet:{i}", t) for i, t in enumerate(texts) if t])
  assert sum(s["documents"] for s in meta["splits"].values()) == sum(map(bool, texts))
  (tmp_path / "b.jsonl").write_text(
      "".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
  run([str(tmp_path / "b.jsonl")], tmp_path / "out2")
  assert_dataset(str(tmp_path / "out2"),
                 [(f"b.jsonl:{i}", t) for i, t in enumerate(texts, 1) if t])


def test_a_null_parquet_text_names_the_file_and_row(tmp_path):
  """A null text is an error naming its row, not a document dropped without a word."""
  path = tmp_path / "a.parquet"
  pq.write_table(pa.table({"text": ["one", None, "three"]}), path)
  with pytest.raises(readers.PrepareError, match=r"a.parquet: row 1: 'text' is null"):
    run([str(path)], tmp_path / "out")


def test_a_double_star_glob_reaches_every_depth_and_a_tilde_is_home(tmp_path, monkeypatch):
  """--input='data/**/*.txt' reads the files of every folder below (without recursive=True,
  ** is *: the deeper files were left out without a word); --input='~/...' in quotes, which
  the shell leaves alone, is the home directory's."""
  for rel in ("top.txt", "a/one.txt", "a/b/two.txt"):
    (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / rel).write_text(rel, encoding="utf-8")
  assert list(readers.input_files([str(tmp_path / "data" / "**" / "*.txt")]).values()) == [
      "a/b/two.txt", "a/one.txt", "top.txt"]
  monkeypatch.setenv("HOME", str(tmp_path))
  assert readers.input_files(["~/data/a/*.txt"]) == {str(tmp_path / "data/a/one.txt"): "one.txt"}


def test_a_run_makes_fineweb_edu_as_fineweb_edu_and_only_when_allowed(tmp_path, hub):
  """dataset=fineweb_edu with auto_prepare downloads FineWeb-Edu, and meta.json and the error
  name `prepare fineweb --edu`; without auto_prepare nothing is downloaded."""
  edu = str(tmp_path / "edu")
  with pytest.raises(UserError, match=r"(?s)prepare fineweb --edu --out=.*auto_prepare=True"):
    datasets.ensure("fineweb_edu", edu, auto_prepare=False)
  assert hub["download"] == [] and not os.path.exists(edu)
  datasets.ensure("fineweb_edu", edu, auto_prepare=True)
  assert {d[0] for d in hub["download"]} == {"HuggingFaceFW/fineweb-edu"}
  assert token_files.read_meta(edu)["command"] == (
      f"python -m jaxgpt.prepare fineweb --edu --out={edu}")
  with pytest.raises(UserError) as e:  # a local dataset: auto_prepare cannot make it
    datasets.make("shakespeare", str(tmp_path / "sh"), auto_prepare=False)
  assert "auto_prepare" not in str(e.value)


def test_the_hub_probe_is_skipped_behind_a_proxy_and_offline_says_so(monkeypatch):
  from huggingface_hub import constants

  def unreachable(*args, **kwargs):
    raise OSError(101, "Network is unreachable")

  monkeypatch.setattr(fineweb.socket, "create_connection", unreachable)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
    monkeypatch.delenv(key, raising=False)
  with pytest.raises(readers.PrepareError, match=r"is unreachable \(Network is unreachable\)"):
    fineweb.check_hub_reachable()
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # only the proxy reaches the Hub
  fineweb.check_hub_reachable()
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(readers.PrepareError, match=r"^HF_HUB_OFFLINE is set"):
    fineweb.check_hub_reachable()


def test_every_shard_but_a_splits_last_holds_shard_tokens(tmp_path):
  """--shard_tokens is each shard's size, as llm.c's 100M-token shards: only a split's last
  shard is shorter, and the shards are numbered from 000000 on."""
  write_parquet(tmp_path / "a.parquet", TEXTS)
  out = str(tmp_path / "out")
  meta = run([str(tmp_path / "a.parquet")], out, shard_tokens=3000, val_fraction=0.5)
  for split in token_files.SPLITS:
    sizes = [len(t) for t in split_tokens(out, split)]
    assert len(sizes) > 1, split
    assert sizes[:-1] == [3000] * (len(sizes) - 1) and 0 < sizes[-1] <= 3000, (split, sizes)
    assert sum(sizes) == meta["splits"][split]["tokens"]
    names = [p.rsplit("/", 1)[1] for p in token_files.find_shards(out, split)]
    assert names == [f"t_{split}_{i:06d}.bin" for i in range(len(sizes))]


def test_a_val_cap_reached_exactly_takes_no_further_document(tmp_path):
  """val_tokens equal to the first val document's tokens: that document alone is val."""
  docs = [(f"d{i}", f"Document number {i} says {'word ' * (i % 7)}.") for i in range(400)]
  path = tmp_path / "d.jsonl"
  path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
  first_val = next(t for i, t in docs if shards.is_val(i, 0.1))
  cap = len(expected_tokens(first_val))
  meta = run([str(path)], tmp_path / "out", val_tokens=cap)
  [val] = split_tokens(str(tmp_path / "out"), "val")
  assert val.tolist() == expected_tokens(first_val)
  assert meta["splits"]["val"] == {"tokens": cap, "documents": 1, "shards": 1}
  assert meta["splits"]["train"]["documents"] == len(docs) - 1


def test_max_tokens_reached_exactly_stops_at_that_document(tmp_path):
  write_parquet(tmp_path / "a.parquet", TEXTS)
  lengths = np.cumsum([len(expected_tokens(t)) for t in TEXTS])
  meta = run([str(tmp_path / "a.parquet")], tmp_path / "out", max_tokens=int(lengths[9]),
             val_fraction=0.5)
  assert sum(s["documents"] for s in meta["splits"].values()) == 10
  assert sum(s["tokens"] for s in meta["splits"].values()) == lengths[9]


def test_parquet_rows_without_an_id_are_named_by_file_and_row_from_0(tmp_path):
  """As a null jsonl id is named by its line: the name decides the split, which must not move
  between versions (a re-prepared dataset would put train documents in val)."""
  pq.write_table(pa.table({"text": TEXTS}), str(tmp_path / "a.parquet"), row_group_size=7)
  run([str(tmp_path / "a.parquet")], tmp_path / "out")
  names = [f"a.parquet:{i}" for i in range(len(TEXTS))]
  ids = assert_dataset(str(tmp_path / "out"), list(zip(names, TEXTS)))
  assert ids["val"] == [n for n in names if shards.is_val(n, shards.VAL_FRACTION)] != []


def test_the_split_of_a_document_is_the_same_in_every_version():
  """A dataset made again (a new shard size, more data) keeps each document in its split: a
  change to the hash would move train documents into val. The tests above compare against
  is_val itself, and catch a changed hash only where it leaves a split empty."""
  assert [i for i in range(100) if shards.is_val(f"doc{i}", 0.1)] == [7, 23, 48, 58, 61, 66, 72]


def test_an_out_that_is_a_dangling_symlink_is_named_as_one(tmp_path):
  """makedirs says only "File exists" for it."""
  (tmp_path / "out").symlink_to(tmp_path / "nowhere")
  said = f"out: cannot write there (a symlink to {tmp_path / 'nowhere'}, which does not exist)"
  with (pytest.raises(readers.PrepareError, match=re.escape(said)),
        shards.write_lock(str(tmp_path / "out"), wait=False)):
    pass
  assert not (tmp_path / "nowhere").exists()
