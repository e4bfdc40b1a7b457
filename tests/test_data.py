"""Token shards on disk and the Grain pipeline over them."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
from conftest import pattern_tokens

from jaxgpt import data, errors, token_files
from jaxgpt.errors import UserError
from jaxgpt.prep import shards


def test_llmc_shard_round_trip(tmp_path):
  tokens = np.arange(1000, dtype=np.uint16) * 50
  path = str(tmp_path / "x_train_000000.bin")
  shards.write_shard(path, tokens)
  header = np.fromfile(path, dtype="<i4", count=256)
  assert list(header[:3]) == [20240520, 1, 1000] and not header[3:].any()  # llm.c's zeros
  np.testing.assert_array_equal(token_files.read_tokens(path), tokens)
  assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


def test_reads_nanogpt_bin_and_build_nanogpt_npy(tmp_path):
  tokens = pattern_tokens(500)
  tokens.tofile(tmp_path / "train.bin")
  np.save(tmp_path / "edu_val_000000.npy", tokens)
  np.testing.assert_array_equal(token_files.read_tokens(str(tmp_path / "train.bin")), tokens)
  np.testing.assert_array_equal(token_files.read_tokens(str(tmp_path / "edu_val_000000.npy")), tokens)
  assert token_files.find_shards(str(tmp_path), "train") == [str(tmp_path / "train.bin")]
  assert token_files.find_shards(str(tmp_path), "val") == [str(tmp_path / "edu_val_000000.npy")]
  np.save(tmp_path / "edu_train_000000.npy", tokens)  # train.bin converted, left beside it
  with pytest.raises(UserError, match=f"{tmp_path}: train files of two kinds, train.bin and "
                                      "edu_train_000000.npy: one dataset twice"):
    data.open_splits(str(tmp_path), 8, 128)


@pytest.mark.parametrize("name", ["medieval", "pretrain", "val", "eval-train", "fineweb"])
def test_a_dataset_s_name_never_moves_a_file_to_the_other_split(tmp_path, name):
  """Shards are named NAME_SPLIT_N.bin after their folder; 'val' in 'medieval' is no split."""
  for split in token_files.SPLITS:
    shards.write_shard(str(tmp_path / f"{name}_{split}_000000.bin"), pattern_tokens(50))
  for split in token_files.SPLITS:
    assert token_files.find_shards(str(tmp_path), split) == [
        str(tmp_path / f"{name}_{split}_000000.bin")]


def test_a_token_file_named_in_capitals_is_of_its_split(tmp_path):
  """A copy from a case-insensitive filesystem may spell a name in capitals: such a file was
  left out, and a split of both spellings trained on part of itself without a word."""
  for name, seed in (("x_train_000000.bin", 1), ("X_TRAIN_000001.BIN", 2), ("X_VAL_000000.BIN", 3)):
    shards.write_shard(str(tmp_path / name), pattern_tokens(300, seed=seed))
  assert [os.path.basename(p) for p in token_files.find_shards(str(tmp_path), "train")] == [
      "X_TRAIN_000001.BIN", "x_train_000000.bin"]
  sources = data.open_splits(str(tmp_path), 8, 128)
  assert (sources["train"].n_tokens, sources["val"].n_tokens) == (600, 300)


def test_one_file_under_two_spellings_is_refused(tmp_path):
  """train_000.bin beside its copy TRAIN_000.BIN (a case-sensitive filesystem keeps both): the
  split trained on its tokens twice."""
  for name in ("x_train_000000.bin", "X_TRAIN_000000.BIN", "X_TRAIN_000001.BIN"):
    shards.write_shard(str(tmp_path / name), pattern_tokens(300))
  with pytest.raises(token_files.ShardError, match="X_TRAIN_000000.BIN and x_train_000000.bin: "
                     "one file twice"):
    token_files.find_shards(str(tmp_path), "train")


@pytest.mark.parametrize("layout", ["nanogpt", "build-nanogpt", "llm.c"])
def test_the_trainer_reads_each_format(tmp_path, layout):
  """What a nanoGPT, build-nanogpt or llm.c user already has works as data_dir."""
  tokens = {"train": pattern_tokens(300, seed=1), "val": pattern_tokens(100, seed=2)}
  for split, t in tokens.items():
    if layout == "nanogpt":
      t.tofile(tmp_path / f"{split}.bin")
    elif layout == "build-nanogpt":
      np.save(tmp_path / f"edufineweb_{split}_000000.npy", t)
    else:
      shards.write_shard(str(tmp_path / f"fineweb_{split}_000000.bin"), t)
  for split, t in tokens.items():
    src = data.open_split(str(tmp_path), split, block_size=8, vocab_size=96)
    assert len(src) == (len(t) - 1) // 8
    np.testing.assert_array_equal(np.concatenate([src[i][:-1] for i in range(len(src))]),
                                  t[:len(src) * 8])


def test_a_nanogpt_character_dataset_sets_the_vocabulary(tmp_path):
  """shakespeare_char's meta.pkl says 65 characters: a 50304-token model would train on them
  as GPT-2 ids and close with a sample decoded as GPT-2 text."""
  chars = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak."))
  with open(tmp_path / "meta.pkl", "wb") as f:
    pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                 "stoi": {c: i for i, c in enumerate(chars)}}, f)
  for split in token_files.SPLITS:
    (pattern_tokens(200) % len(chars)).astype(np.uint16).tofile(tmp_path / f"{split}.bin")
  for gpt2_vocab in (50304, 50257):  # padded, and as GPT-2's weights have it (init_from)
    with pytest.raises(UserError, match=rf"meta.pkl: nanoGPT's dataset of a {len(chars)}-token "
                                        rf"vocabulary, .* set --config.vocab_size={len(chars)} "
                                        r".*, or, to start from weights of GPT-2's tokens "
                                        r"\(init_from\), use data made with GPT-2's tokenizer$"):
      data.open_splits(str(tmp_path), 8, gpt2_vocab)
  assert len(data.open_splits(str(tmp_path), 8, len(chars))["train"]) == 199 // 8
  assert len(data.open_splits(str(tmp_path), 8, 128)["train"]) == 199 // 8  # padded: trains
  with open(tmp_path / "meta.pkl", "wb") as f:
    pickle.dump({"vocab_size": 65, "run": os.system}, f)  # never called: refused unread
  with pytest.raises(UserError, match="not a nanoGPT meta.pkl .*names posix.system"):
    data.open_splits(str(tmp_path), 8, 65)
  (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 65})[:-3] + b"\xff\xff\xff")
  with pytest.raises(UserError, match="meta.pkl: not a nanoGPT meta.pkl"):
    data.open_splits(str(tmp_path), 8, 65)


def test_truncated_shard_is_rejected_naming_the_file(tmp_path):
  path = str(tmp_path / "a_train_000000.bin")
  shards.write_shard(path, np.arange(100, dtype=np.uint16))
  with open(path, "r+b") as f:
    f.truncate(256 * 4 + 150)
  with pytest.raises(token_files.ShardError, match="a_train_000000.bin: header says 100 tokens"):
    token_files.read_tokens(path)


def test_an_llmc_shard_cut_inside_its_header_is_said_to_be_cut(tmp_path):
  """Not read as headerless tokens (the magic's low half would be token 55432)."""
  path = str(tmp_path / "a_val_000000.bin")
  shards.write_shard(path, np.arange(100, dtype=np.uint16))
  with open(path, "r+b") as f:
    f.truncate(500)
  with pytest.raises(token_files.ShardError,
                     match=r"a_val_000000.bin: an llm.c shard cut short \(500 bytes"):
    token_files.read_tokens(path)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_wider_tokens_written_without_a_header_are_refused(tmp_path, dtype):
  """`np.array(ids).tofile("train.bin")` writes int64: read as uint16, 3 tokens in 4 would be 0."""
  path = tmp_path / "train.bin"
  pattern_tokens(1000).astype(dtype).tofile(path)
  bits = np.dtype(dtype).itemsize * 8
  with pytest.raises(token_files.ShardError,
                     match=rf"train.bin: every second uint16 .* int{bits} tokens, not nanoGPT's"):
    token_files.read_tokens(str(path))
  pattern_tokens(1000).astype(np.uint16).tofile(path)  # the same tokens as uint16 are read
  np.testing.assert_array_equal(token_files.read_tokens(str(path)), pattern_tokens(1000))
  # nanoGPT's characters, one per line ('\n' is 0 there), are uint16 whose every second is 0.
  lines = np.zeros(1000, np.uint16)
  lines[::2] = np.arange(1, 501) % 26 + 1
  lines.tofile(path)
  with open(tmp_path / "meta.pkl", "wb") as f:
    pickle.dump({"vocab_size": 65}, f)
  np.testing.assert_array_equal(token_files.read_tokens(str(path)), lines)


def test_a_npy_file_or_a_folder_named_like_a_bin_shard_is_said_to_be_one(tmp_path):
  np.save(tmp_path / "a.npy", np.arange(100, dtype=np.uint16))
  os.rename(tmp_path / "a.npy", tmp_path / "val.bin")
  with pytest.raises(token_files.ShardError, match="val.bin: a .npy file named .bin; rename it"):
    token_files.read_tokens(str(tmp_path / "val.bin"))
  os.mkdir(tmp_path / "a_train_000000.bin")
  with pytest.raises(token_files.ShardError,
                     match="a_train_000000.bin: a folder, not a token file"):
    token_files.read_tokens(str(tmp_path / "a_train_000000.bin"))


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY\x01"], ids=["empty", "cut-in-header"])
def test_an_unreadable_npy_shard_is_rejected_naming_the_file(tmp_path, content):
  path = tmp_path / "edu_train_000003.npy"
  path.write_bytes(content)
  with pytest.raises(token_files.ShardError, match="edu_train_000003.npy: not a readable .npy"):
    token_files.read_tokens(str(path))


def test_a_shard_the_user_cannot_read_is_one_line_naming_it(tmp_path, monkeypatch):
  path = str(tmp_path / "a_train_000000.bin")
  shards.write_shard(path, np.arange(600, dtype=np.uint16))

  def refused(file, *args, **kwargs):  # as for a file of another user's (root reads any file)
    raise PermissionError(13, "Permission denied", file)

  monkeypatch.setattr(np, "fromfile", refused)
  with pytest.raises(token_files.ShardError,
                     match=r"a_train_000000.bin: cannot read it \(Permission denied\)"):
    data.open_split(str(tmp_path), "train", block_size=8, vocab_size=1000)


def test_a_meta_json_that_cannot_be_read_or_parsed_is_one_line(tmp_path, monkeypatch):
  """Each was a traceback (PermissionError, RecursionError) from the start's check of the split."""
  (tmp_path / "meta.json").write_text("{}")

  def refused(file, *args, **kwargs):  # as for a file of another user's (root reads any file)
    raise PermissionError(13, "Permission denied", str(file))

  with monkeypatch.context() as m, pytest.raises(UserError, match=r"meta.json: cannot read it "
                                                                r"\(Permission denied\)"):
    m.setattr(errors, "open", refused, raising=False)  # errors.py reads the JSON files
    token_files.read_meta(str(tmp_path))
  (tmp_path / "meta.json").write_text("[" * 100_000 + "]" * 100_000)  # past Python's stack
  with pytest.raises(UserError, match=r"meta.json: not JSON \(maximum recursion depth"):
    token_files.read_meta(str(tmp_path))


def test_a_shard_beyond_the_headers_int32_count_is_refused_before_writing(tmp_path):
  path = tmp_path / "big_train_0.bin"
  with pytest.raises(token_files.ShardError, match="2,147,483,648 tokens; a shard holds "
                                                  "2,147,483,647"):
    shards.write_shard(str(path), np.broadcast_to(np.uint16(7), (2**31,)))
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("token", [500, 96])  # 96: one past the embedding, which JAX would clamp
def test_token_beyond_vocab_is_rejected_naming_the_file(tmp_path, token):
  path = str(tmp_path / "t_train_0.bin")
  shards.write_shard(path, np.array([1, 2, token] * 50, np.uint16))
  with pytest.raises(token_files.ShardError,
                     match=rf"t_train_0.bin: token id {token} >= vocab_size 96"):
    data.open_split(str(tmp_path), "train", block_size=8, vocab_size=96)
  token_files.check_vocab(path, np.zeros(0, np.uint16), 96)  # no tokens: nothing out of range


def test_ids_past_the_checked_head_of_a_file_are_refused_as_their_window_is_read(tmp_path,
                                                                                monkeypatch):
  """Files no meta.json vouches for (llm.c's, nanoGPT's) are not read whole at every start: 20 GB
  at FineWeb-10B's size, on every host, at every resume."""
  monkeypatch.setattr(data, "VOCAB_CHECK_TOKENS", 64)
  tokens = np.arange(600, dtype=np.uint16) % 90
  tokens[500] = 96
  path = str(tmp_path / "t_train_0.bin")
  shards.write_shard(path, tokens)
  src = data.open_split(str(tmp_path), "train", block_size=8, vocab_size=96)
  np.testing.assert_array_equal(src[0], tokens[:9])
  with pytest.raises(token_files.ShardError, match=r"t_train_0.bin: token id 96 >= vocab_size 96"):
    src[500 // 8]  # the window holding it, where JAX would have clamped it into another token
  with pytest.raises(token_files.ShardError, match=r"t_train_0.bin: token id 96 >= vocab_size 96"):
    data.open_split(str(tmp_path), "train", block_size=8, vocab_size=96, every_id=True)  # hosts
  tokens[500] = 95
  shards.write_shard(path, tokens)
  src = data.open_split(str(tmp_path), "train", block_size=8, vocab_size=96)
  assert [src[i][0] for i in range(len(src))] == [tokens[8 * i] for i in range(len(src))]


def test_a_split_of_files_all_shorter_than_a_window_is_one_short_line_with_the_lever(tmp_path):
  """Shards of `prepare --shard_tokens=100` read with block_size=128: the line named every one
  of hundreds of files (10 kB), and said neither how short they are nor what to change."""
  for i in range(300):
    shards.write_shard(str(tmp_path / f"s_train_{i:06d}.bin"), np.arange(100, dtype=np.uint16))
  with pytest.raises(token_files.ShardError) as error:
    data.open_split(str(tmp_path), "train", block_size=128, vocab_size=200)
  said = str(error.value)
  assert len(said) < 400 and "s_train_000299.bin" not in said
  assert said.startswith(f"{tmp_path / 's_train_000000.bin'} and 299 other files: ")
  assert "fewer than block_size+1=129 tokens in every file (the longest holds 100)" in said
  assert "lower block_size" in said and "--shard_tokens" in said


def test_a_split_shorter_than_a_window_is_not_told_to_use_larger_shards(tmp_path):
  """A small corpus's val split, 480 tokens in one file, at block_size 1024: larger shards
  cannot give it a window, which the line said they would."""
  shards.write_shard(str(tmp_path / "s_val_000000.bin"), np.arange(480, dtype=np.uint16))
  with pytest.raises(token_files.ShardError) as error:
    data.open_split(str(tmp_path), "val", block_size=1024, vocab_size=500)
  said = str(error.value)
  assert "(the longest holds 480); lower block_size, or give the split more tokens" in said
  assert "--shard_tokens" not in said


def test_windows_cover_every_token_once_per_epoch(tmp_path):
  a, b = np.arange(0, 41, dtype=np.uint16), np.arange(100, 133, dtype=np.uint16)
  shards.write_shard(str(tmp_path / "s_train_0.bin"), a)
  shards.write_shard(str(tmp_path / "s_train_1.bin"), b)
  src = data.open_split(str(tmp_path), "train", block_size=8, vocab_size=200)
  assert len(src) == 5 + 4  # (41-1)//8 + (33-1)//8
  w = [src[i] for i in range(len(src))]
  assert all(x.shape == (9,) for x in w)
  np.testing.assert_array_equal(w[0], a[:9])
  np.testing.assert_array_equal(w[1], a[8:17])
  np.testing.assert_array_equal(w[5], b[:9])  # never straddles two shards
  targets = np.concatenate([x[1:] for x in w[:5]])
  np.testing.assert_array_equal(targets, a[1:41])


def take(ds, n: int) -> list:
  """The first n batches a dataset gives."""
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_train_batches_are_seeded_and_reshuffled_each_epoch(token_dir):
  src = data.open_split(token_dir, "train", block_size=16, vocab_size=96)
  make = lambda seed: data.train_dataset(src, accum_steps=2, batch_size=3, seed=seed, workers=0)
  a, b, c = take(make(1), 4), take(make(1), 4), take(make(2), 4)
  assert a[0].shape == (2, 3, 17) and a[0].dtype == np.uint16
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))
  # Two epochs of windows: each every window once, in a different order.
  n = len(src)
  ds = data.train_dataset(src, accum_steps=1, batch_size=1, seed=1, workers=0)
  seen = [x[0, 0].tobytes() for x in take(ds, 2 * n)]
  epoch1, epoch2 = seen[:n], seen[n:]
  assert sorted(epoch1) == sorted(np.asarray(src[i], np.uint16).tobytes() for i in range(n))
  assert sorted(epoch2) == sorted(epoch1) and epoch1 != epoch2


def test_worker_processes_give_the_same_batches(token_dir):
  src = data.open_split(token_dir, "train", block_size=16, vocab_size=96)
  in_process = take(data.train_dataset(src, accum_steps=2, batch_size=3, seed=5,
                                                workers=0), 5)
  workers = take(data.train_dataset(src, accum_steps=2, batch_size=3, seed=5,
                                             workers=2), 5)
  np.testing.assert_array_equal(np.stack(in_process), np.stack(workers))


class CountingWindows(data.TokenWindows):
  """Windows that count how many were read."""

  reads = 0

  def __getitem__(self, index: int) -> np.ndarray:
    CountingWindows.reads += 1
    return super().__getitem__(index)


def settled(count, quiet: float = 1.0, timeout: float = 60) -> int:
  """count() once it has not changed for `quiet` seconds (or after `timeout`): background
  readers have read what they may."""
  deadline, last, since = time.monotonic() + timeout, count(), time.monotonic()
  while time.monotonic() - since < quiet and time.monotonic() < deadline:
    time.sleep(0.05)
    if count() != last:
      last, since = count(), time.monotonic()
  return last


def test_data_prefetch_bounds_how_far_reading_runs_ahead(token_dir, monkeypatch):
  monkeypatch.setattr(CountingWindows, "reads", 0)
  src = CountingWindows(token_files.find_shards(token_dir, "train"), block_size=16)
  it = iter(data.train_dataset(src, accum_steps=2, batch_size=3, seed=0, workers=0, prefetch=1))
  next(it)
  # the batch taken (6 windows, so the count counts), and one read ahead at each level
  assert 6 <= settled(lambda: CountingWindows.reads) <= 6 * 4


def test_eval_batches_are_identical_at_every_call(token_dir):
  src = data.open_split(token_dir, "val", block_size=16, vocab_size=96)
  a = list(data.eval_batches(src, batch_size=4, n_batches=3, seed=0))
  b = list(data.eval_batches(src, batch_size=4, n_batches=3, seed=0))
  assert len(a) == 3 and a[0].shape == (4, 17)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_the_train_splits_evaluation_windows_are_no_epochs_first(token_dir):
  """Grain shuffles epoch e by seed + e: the evaluation's shuffle is none of them."""
  src = data.open_split(token_dir, "train", block_size=16, vocab_size=96)
  n, seed = len(src), 1337
  training = data.stream_windows(src, seed, 0, 3 * n)  # epochs 0, 1 and 2
  evaluated = data.stream_windows(src, data.eval_seed(seed, "train"), 0, 8)
  for epoch in range(3):
    assert not np.array_equal(evaluated, training[epoch * n:epoch * n + 8])


def test_missing_split_names_the_directory(tmp_path):
  with pytest.raises(UserError, match=f"{tmp_path}: no 'val' token files"):
    data.open_split(str(tmp_path), "val", block_size=8, vocab_size=96)


def test_processes_evaluate_disjoint_windows_that_together_make_the_global_batches(token_dir):
  src = data.open_split(token_dir, "val", block_size=16, vocab_size=96)
  rows = lambda batches: [tuple(w) for b in batches for w in b.tolist()]
  whole = rows(data.eval_batches(src, batch_size=4, n_batches=2, seed=0))
  parts = [rows(data.eval_batches(src, batch_size=2, n_batches=2, seed=0, shard_index=i,
                                  shard_count=2)) for i in range(2)]
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(whole)


def test_processes_resumed_at_a_window_read_the_global_stream_from_there(token_dir):
  src = data.open_split(token_dir, "train", block_size=16, vocab_size=96)
  first = lambda index, count, size: next(iter(data.train_dataset(
      src, accum_steps=2, batch_size=size, seed=3, workers=0, shard_index=index,
      shard_count=count, start_window=40)))
  rows = lambda b: {tuple(w) for w in b.reshape(-1, 17).tolist()}
  whole = first(0, 1, 8)
  parts = [first(i, 2, 4) for i in range(2)]
  assert not rows(parts[0]) & rows(parts[1])
  assert rows(parts[0]) | rows(parts[1]) == rows(whole)


def test_an_llmc_shard_longer_than_its_header_says_is_refused(tmp_path):
  path = str(tmp_path / "x_train_000000.bin")
  shards.write_shard(path, np.arange(100, dtype=np.uint16))
  with open(path, "ab") as f:
    f.write(np.arange(10, dtype=np.uint16).tobytes())
  with pytest.raises(token_files.ShardError, match="header says 100 tokens"):
    token_files.read_tokens(path)


def test_an_llmc_shard_of_another_version_is_refused_naming_it(tmp_path):
  header = np.zeros(256, "<i4")
  header[:3] = (20240520, 7, 100)  # llm.c's LLaMA-3 shards: version 7, uint32 tokens
  path = tmp_path / "x_train_000000.bin"
  path.write_bytes(header.tobytes() + np.arange(100, dtype="<u4").tobytes())
  with pytest.raises(token_files.ShardError, match="llm.c shard version 7, expected 1"):
    token_files.read_tokens(str(path))


@pytest.mark.parametrize("content, message", [
    (b"\x01\x00\x02", "3 bytes is not a whole number of uint16 tokens"),
    (b"", "empty token file")])
def test_a_headerless_file_of_no_whole_tokens_is_refused_naming_it(tmp_path, content, message):
  path = tmp_path / "train.bin"
  path.write_bytes(content)
  with pytest.raises(token_files.ShardError, match=f"train.bin: {message}"):
    token_files.read_tokens(str(path))


@pytest.mark.parametrize("array", [pattern_tokens(200).astype(np.int32),
                                   pattern_tokens(200).astype(np.int64),
                                   pattern_tokens(200).reshape(10, 20)],
                         ids=["int32", "int64", "2d"])
def test_a_npy_that_is_not_a_1d_uint16_array_is_refused(tmp_path, array):
  np.save(tmp_path / "edu_train_000000.npy", array)
  with pytest.raises(token_files.ShardError, match=rf"edu_train_000000.npy: expected a 1-D "
                                                   rf"uint16 array, got {array.dtype}"):
    token_files.read_tokens(str(tmp_path / "edu_train_000000.npy"))
