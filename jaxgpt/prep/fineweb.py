"""FineWeb and FineWeb-Edu from the Hugging Face Hub, as a dataset directory.

Parquet files are downloaded one at a time as reading reaches them (so
`max_tokens` downloads about what it needs) into the Hugging Face cache
(HF_HOME): the command run again reuses the files finished there, and a file
cut off mid-download is downloaded again from its start (huggingface_hub 2.x
keeps no partial file). Offline, the Hub is not waited on: the error says at
once what to do instead; trouble later, at the Hub or on the way, is one line
too.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from collections.abc import Iterator

from jaxgpt.errors import first_line
from jaxgpt.prep.readers import Piece, PrepareError, read_parquet
from jaxgpt.prep.shards import check_out_dir, write_dataset

REPOS = {False: "HuggingFaceFW/fineweb", True: "HuggingFaceFW/fineweb-edu"}


def fineweb_folder(name: str) -> str:
  """The hub folder of a FineWeb subset: sample-10BT -> sample/10BT, a dump -> data/<dump>."""
  if m := re.fullmatch(r"sample-(\d+BT)", name):
    return f"sample/{m[1]}"
  if re.fullmatch(r"CC-MAIN-\d{4}-\d{2}", name):
    return f"data/{name}"
  raise PrepareError(f"--name={name}: expected a sample (sample-10BT, sample-100BT, "
                     "sample-350BT) or a Common Crawl dump (e.g. CC-MAIN-2024-10)")


def prepare_fineweb(out_dir: str, *, subset: str = "sample-10BT", edu: bool = False,
                    shards_limit: int = 0, **kwargs) -> dict:
  """FineWeb (or FineWeb-Edu) parquet files from the hub -> shards in out_dir, every file of
  the one revision the dataset is at when the download starts (a download takes hours, and
  FineWeb is re-released on its main branch), which meta.json's sources name."""
  import huggingface_hub
  from huggingface_hub.errors import EntryNotFoundError
  check_out_dir(out_dir)
  repo, folder = REPOS[edu], fineweb_folder(subset)
  check_hub_reachable()
  hub_errors = _hub_errors()
  try:
    revision = huggingface_hub.dataset_info(repo).sha or "main"  # a mirror may name none
    entries = huggingface_hub.list_repo_tree(repo, path_in_repo=folder, repo_type="dataset",
                                             revision=revision)
    files = sorted((e for e in entries if e.path.lower().endswith(".parquet")), key=lambda e: e.path)
  except EntryNotFoundError as e:
    raise PrepareError(f"hf://datasets/{repo}/{folder}: not found (--name={subset})") from e
  except hub_errors as e:
    raise _hub_error(repo, folder, e) from e
  if not files:
    raise PrepareError(f"hf://datasets/{repo}/{folder}: no parquet files (--name={subset})")
  if shards_limit:
    files = files[:shards_limit]
  sources: list[str] = []

  def pieces() -> Iterator[Piece]:
    for entry in files:
      sources.append(f"hf://datasets/{repo}@{revision}/{entry.path}")
      try:
        path = huggingface_hub.hf_hub_download(repo, entry.path, repo_type="dataset",
                                               revision=revision)
      except hub_errors as e:
        raise _hub_error(repo, entry.path, e) from e
      yield from read_parquet(path, "text")

  return write_dataset(pieces(), out_dir, sources=sources,
                       total_bytes=sum(e.size for e in files), **kwargs)


def _hub_errors() -> tuple[type[BaseException], ...]:
  """What the hub's calls raise for trouble at the hub or on the way: OSErrors (its HTTP errors,
  a file missing from its cache), its HTTP library's own errors, which are not (a connection
  cut in a file): the bases of HfHubHTTPError, whichever library this version uses; and
  RuntimeErrors, which hf_xet raises for a transfer from Xet storage (FineWeb's files) that
  fails."""
  from huggingface_hub.errors import HfHubHTTPError
  return (OSError, RuntimeError, *HfHubHTTPError.__bases__)


def _hub_error(repo: str, path: str, error: BaseException) -> PrepareError:
  what = first_line(error) or type(error).__name__
  return PrepareError(f"hf://datasets/{repo}/{path}: {what}; run the same command again "
                      "(finished files are cached)")


_OFFLINE_ADVICE = ("Download FineWeb's parquet files where there is a network and run "
                   "`python -m jaxgpt.prepare files --input='DIR/*.parquet' --out=...`, or point "
                   "HF_ENDPOINT at a mirror.")


def check_hub_reachable() -> None:
  """Fails at once, with what to do, where the Hub cannot be reached.

  huggingface_hub would otherwise retry for tens of seconds and end in a long
  traceback. Behind a proxy (HTTPS_PROXY and the like) the direct probe says
  nothing, so it is skipped.
  """
  from huggingface_hub import constants
  if constants.HF_HUB_OFFLINE:
    raise PrepareError(f"HF_HUB_OFFLINE is set: the Hub is not asked for FineWeb's file list. "
                       f"{_OFFLINE_ADVICE}")
  if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return
  url = urllib.parse.urlparse(constants.ENDPOINT)
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=10).close()
  except OSError as e:
    raise PrepareError(f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable "
                       f"({e.strerror or e}); nothing was downloaded. {_OFFLINE_ADVICE}") from None
