"""Corpus files as documents: parquet, jsonl and plain text, read in a stream.

A long document is handed on in pieces whose tokens are those of the whole
text (`_SAFE_CUT`). Every reader fails with a message that names the file
(and line or row).
"""

from __future__ import annotations

import codecs
import glob
import itertools
import json
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from absl import logging

from jaxgpt.errors import UserError

if TYPE_CHECKING:
  import pyarrow as pa

PIECE_CHARS = 1 << 20  # longer documents are tokenized in pieces of about this many characters
READ_BYTES = 1 << 20  # text files are read in chunks of this size

# A space between two non-spaces: GPT-2's pre-tokenizer always starts a new
# pre-token there, so text cut at such a space tokenizes as the whole does.
_SAFE_CUT = re.compile(r"(?<=\S) (?=\S)")


class PrepareError(UserError, ValueError):
  """Input that cannot be turned into token shards."""


class Piece(NamedTuple):
  """A document, or part of one: `last` marks its end, where the end-of-text token goes."""
  doc_id: str
  text: str
  last: bool
  nbytes: int  # input bytes read since the previous piece (progress)


def pieces_of(doc_id: str, text: str, nbytes: int = 0) -> Iterator[Piece]:
  """The document cut at safe spaces into pieces of about PIECE_CHARS characters."""
  start = 0
  while len(text) - start > PIECE_CHARS:
    cut = _SAFE_CUT.search(text, start + PIECE_CHARS)
    if cut is None:
      break
    yield Piece(doc_id, text[start:cut.start()], False, 0)
    start = cut.start()
  yield Piece(doc_id, text[start:], True, nbytes)


def read_parquet(path: str, text_field: str, name: str | None = None) -> Iterator[Piece]:
  """Rows of a parquet file read batch by batch; the `id` column names a row when present.

  Documents without an id are named by `name` (the file's name by default) and
  position, so the split does not change when the corpus moves.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    pf = pq.ParquetFile(path)
  except (pa.ArrowException, OSError) as e:
    raise PrepareError(f"{path}: not a readable parquet file ({e})") from e
  schema = pf.schema_arrow
  if text_field not in schema.names:
    raise PrepareError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
                       "set --text_field")
  for column in {text_field, "id"} & set(schema.names):
    if schema.names.count(column) > 1:
      raise PrepareError(f"{path}: {schema.names.count(column)} columns named {column!r}")
  kind = schema.field(text_field).type
  if not _is_text(kind):
    raise PrepareError(f"{path}: column {text_field!r} holds {kind}, not text")
  columns = [text_field] + (["id"] if "id" in schema.names and text_field != "id" else [])
  size, n_rows = os.path.getsize(path), max(pf.metadata.num_rows, 1)
  name = name or os.path.basename(path)
  row = 0
  batches = pf.iter_batches(batch_size=1024, columns=columns)
  while True:
    try:
      batch = next(batches, None)
    except (pa.ArrowException, OSError) as e:  # a corrupt page
      raise PrepareError(f"{path}: the rows from row {row} on are not readable ({e})") from e
    if batch is None:
      return
    texts = _values(batch, text_field, path, row)
    ids = _values(batch, "id", path, row) if len(columns) == 2 else [None] * len(texts)
    for doc_id, text in zip(ids, texts):
      if text is None:
        raise PrepareError(f"{path}: row {row}: {text_field!r} is null")
      nbytes = size * (row + 1) // n_rows - size * row // n_rows  # the file's bytes, row by row
      row += 1
      if text:
        yield from pieces_of(f"{name}:{row - 1}" if doc_id is None else str(doc_id), text,
                             nbytes)


def _is_text(kind: pa.DataType) -> bool:
  """Any Arrow string type, dictionary-encoded or not: to_pylist gives str for each (pandas and
  polars write dictionary<string> and string_view columns)."""
  import pyarrow as pa
  if pa.types.is_dictionary(kind):
    kind = kind.value_type
  return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
          or pa.types.is_string_view(kind))


def _values(batch: pa.RecordBatch, field: str, path: str, first_row: int) -> list:
  """A column of a record batch as Python values; text that is not UTF-8 is an error naming
  its row, as in jsonl and txt files."""
  import pyarrow as pa
  column = batch.column(field)
  try:
    return column.to_pylist()
  except UnicodeDecodeError as e:
    raw = column.cast(pa.large_binary()).to_pylist()
    bad = next(i for i, value in enumerate(raw) if value is not None and not _is_utf8(value))
    raise PrepareError(f"{path}: row {first_row + bad}: {field!r} is not UTF-8 text ({e})"
                       ) from None


def _is_utf8(value: bytes) -> bool:
  try:
    value.decode("utf-8")
  except UnicodeDecodeError:
    return False
  return True


def read_jsonl(path: str, text_field: str, name: str | None = None) -> Iterator[Piece]:
  """One JSON object per line; its `id` names the document when present, else `name` (the
  file's name by default) and the line number."""
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except UnicodeDecodeError as e:  # a ValueError too: it read "not a JSON object"
        raise PrepareError(f"{path}:{lineno}: not UTF-8 text ({e})") from e
      except (ValueError, RecursionError) as e:  # RecursionError: nested past Python's stack
        raise PrepareError(f"{path}:{lineno}: not a JSON object ({e})") from e
      if not isinstance(record, dict):
        raise PrepareError(f"{path}:{lineno}: not a JSON object")
      if text_field not in record:
        raise PrepareError(f"{path}:{lineno}: no field {text_field!r} (it has "
                           f"{', '.join(map(repr, record)) or 'none'}); set --text_field")
      text = record[text_field]
      if not isinstance(text, str):
        raise PrepareError(f"{path}:{lineno}: {text_field!r} holds "
                           f"{type(text).__name__}, not text")
      if text:
        doc_id = record.get("id")
        doc_id = (f"{name or os.path.basename(path)}:{lineno}" if doc_id is None
                  else well_formed(str(doc_id)))
        yield from pieces_of(doc_id, well_formed(text), len(line))


def well_formed(text: str) -> str:
  """`text` with lone surrogates (JSON's "\\ud83d", half an emoji) as U+FFFD, as tiktoken
  reads them: they cannot be hashed or counted as UTF-8."""
  return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def read_text(path: str, separator: str, name: str | None = None) -> Iterator[Piece]:
  """UTF-8 text read in chunks: the whole file is one document, or one per `separator`; each is
  named by `name` (the file's name by default) and its index. A leading BOM (Windows editors
  write one) is dropped: it is not text, and would be tokens."""
  decoder = codecs.getincrementaldecoder("utf-8-sig")()
  buf, index, opened, pending = "", 0, False, 0
  scanned = 0  # where the search for a cut in buf resumes: the text before holds none
  name = name or os.path.basename(path)
  doc_id = lambda: f"{name}#{index}" if separator else name
  with open(path, "rb") as f:
    while True:
      held = len(decoder.getstate()[0])  # a character's first bytes, decoded with the next read
      sought = max(len(buf) - len(separator) + 1, 0)  # buf holds no separator: none starts before
      raw = f.read(READ_BYTES)
      pending += len(raw)
      try:
        buf += decoder.decode(raw, final=not raw)
      except UnicodeDecodeError as e:  # its position is in the bytes this read decodes
        before = f.tell() - len(raw)  # and past a BOM, where the first read strips one
        bom = len(codecs.BOM_UTF8) if before == 0 and raw.startswith(codecs.BOM_UTF8) else 0
        at = before - held + bom + e.start
        raise PrepareError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                           f"{at:,}: {e.reason})") from e
      if separator:
        *done, buf = _split(buf, separator, sought)
        scanned = scanned if not done else 0
        for text in done:
          if text or opened:
            yield from pieces_of(doc_id(), text, pending)
            pending = 0
          index, opened = index + 1, False
      if not raw:
        break
      # The open document's text so far, cut short of a separator that may be only half read.
      # Text without spaces (Chinese, say) is searched once, not again at every read.
      while len(buf) > PIECE_CHARS:
        end = max(len(buf) - len(separator), 0)
        cut = _SAFE_CUT.search(buf, max(PIECE_CHARS, scanned), end)
        if cut is None:
          scanned = max(end - 1, 0)  # a space at end - 1 may yet have a non-space after it
          break
        yield Piece(doc_id(), buf[:cut.start()], False, pending)
        buf, opened, pending, scanned = buf[cut.start():], True, 0, 0
  if buf or opened:
    yield from pieces_of(doc_id(), buf, pending)


def _split(text: str, separator: str, start: int) -> list[str]:
  """`text.split(separator)` searched from `start` (no separator starts before it): a long
  document without one is searched once, not again from its start at every read."""
  parts, begin, at = [], 0, text.find(separator, start)
  while at >= 0:
    parts.append(text[begin:at])
    begin = at + len(separator)
    at = text.find(separator, begin)
  parts.append(text[begin:])
  return parts


FORMATS = (".parquet", ".jsonl", ".txt")


def file_format(path: str) -> str:
  """The extension that says how a file is read, in lower case: BOOK.TXT is text too."""
  return os.path.splitext(path)[1].lower()


def read_file(path: str, text_field: str, separator: str, name: str) -> Iterator[Piece]:
  """The pieces of one input file, read as its extension says; `name` names its documents."""
  ext = file_format(path)
  if ext == ".txt":
    pieces = read_text(path, separator, name)
  elif ext == ".parquet":
    pieces = read_parquet(path, text_field, name)
  else:
    pieces = read_jsonl(path, text_field, name)
  try:
    yield from pieces
  except OSError as e:  # another user's file, an I/O error (parquet's reader says its own)
    raise PrepareError(f"{path}: cannot read it ({e.strerror or e})") from e


def input_files(patterns: list[str]) -> dict[str, str]:
  """The files the globs match, in order, each once, with the name of each below its glob's
  fixed folder ('books/*/book.txt' names '1/book.txt'; a file of one folder, its file name):
  a document without an id is named by it, whatever the other inputs. An existing file is
  taken as named, not as a glob: 'run[1]/a.jsonl' is that file. An unknown format is an
  error; a file named more than once is read once, and a warning says so."""
  files: dict[str, str] = {}
  # The files themselves: 'a.txt', './a.txt', a link and a hard link to it are one.
  named: dict[tuple[int, int], list[str]] = {}
  for pattern in patterns:
    pattern = os.path.expanduser(pattern)
    if os.path.isfile(pattern):  # its folder is fixed, whatever `[`, `*` or `?` it holds
      matched, fixed = [pattern], os.path.dirname(pattern)
    else:
      matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
      if not matched:
        folder = f"a folder: give a glob, e.g. --input='{os.path.join(pattern, '*.txt')}'"
        raise PrepareError(f"--input={pattern}: " + (
            folder if os.path.isdir(pattern) else
            f"a link to {os.readlink(pattern)}, which is not there" if os.path.islink(pattern)
            else "no files match"))
      folders = pattern.split(os.sep)[:-1]
      fixed = os.sep.join(itertools.takewhile(lambda part: not glob.has_magic(part), folders))
    for path in matched:
      if file_format(path) not in FORMATS:
        raise PrepareError(f"{path}: unknown format (expected {', '.join(FORMATS)})")
      stat = os.stat(path)
      names = named.setdefault((stat.st_dev, stat.st_ino), [])
      if not names:
        files[path] = os.path.relpath(path, fixed or ".")
      names.append(path)
  for first, *others in (names for names in named.values() if len(names) > 1):
    also = list(dict.fromkeys(n for n in others if n != first))
    logging.warning("--input names %s %d times%s: read once", first, 1 + len(others),
                    f" (as {', '.join(also)} too)" if also else "")
  return files
