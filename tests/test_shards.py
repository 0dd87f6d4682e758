"""uint16 .bin shards (llm.c header or raw), the window sampler, and tokenizers."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recipes.data import shards
from recipes.data.shards import TokenWindows, read_shard, write_shard, write_shards
from recipes.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer


def test_llmc_header_layout(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.uint16)
    path = write_shard(tmp_path / "a.bin", tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [20240520, 1, 5] and not header[3:].any()
    assert path.stat().st_size == 256 * 4 + 5 * 2
    assert np.fromfile(path, dtype="<u2", offset=1024).tolist() == tokens.tolist()
    assert read_shard(path).tolist() == tokens.tolist()
    assert read_shard(path, fmt="llmc").tolist() == tokens.tolist()


def test_raw_headerless_shards(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    path = write_shard(tmp_path / "raw.bin", tokens, fmt="raw")
    assert path.stat().st_size == 2000
    assert read_shard(path).tolist() == tokens.tolist()
    with pytest.raises(ValueError, match="magic must be one of"):
        read_shard(path, fmt="llmc")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="even byte count"):
        read_shard(tmp_path / "odd.bin")


def test_uint32_llama3_variant(tmp_path):
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240801, 7, 3)
    (tmp_path / "l3.bin").write_bytes(header.tobytes() + np.array([5, 128_000, 9], dtype="<u4").tobytes())
    assert read_shard(tmp_path / "l3.bin").tolist() == [5, 128_000, 9]


def test_corrupt_shards_are_refused(tmp_path):
    path = write_shard(tmp_path / "t.bin", np.arange(10))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated"):
        read_shard(path)
    bad = np.zeros(256, dtype="<i4")
    bad[:3] = (20240520, 3, 0)
    (tmp_path / "v.bin").write_bytes(bad.tobytes())
    with pytest.raises(ValueError, match="version must be 1"):
        read_shard(tmp_path / "v.bin")
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 65535\]"):
        write_shard(tmp_path / "x.bin", [70000])
    with pytest.raises(ValueError, match="fmt must be one of"):
        read_shard(path, fmt="npy")
    with pytest.raises(FileNotFoundError, match="no .bin shards"):
        shards.shard_paths(tmp_path / "nothing*.bin")


@given(sizes=st.lists(st.integers(0, 60), min_size=1, max_size=4), seq_len=st.integers(1, 6),
       seed=st.integers(0, 3), shuffle=st.booleans())
def test_every_window_once_per_epoch(sizes, seq_len, seed, shuffle):
    arrays = [np.arange(n, dtype=np.uint16) + 1000 * i for i, n in enumerate(sizes)]
    if sum(max(0, (n - 1) // seq_len) for n in sizes) == 0:
        with pytest.raises(ValueError, match="no window"):
            TokenWindows(arrays, seq_len)
        return
    data = TokenWindows(arrays, seq_len, seed, shuffle)
    n = len(data)
    for epoch in range(2):
        seen = sorted(tuple(data.window(epoch * n + k)) for k in range(n))
        expected = sorted(tuple(a[s * seq_len : s * seq_len + seq_len + 1]) for a, c in zip(arrays, data.counts)
                          for s in range(c))
        assert seen == expected
    again = TokenWindows(arrays, seq_len, seed, shuffle)  # position -> window is a pure function
    backwards = range(2 * n - 1, -1, -1)
    assert [tuple(again.window(k)) for k in backwards] == [tuple(data.window(k)) for k in backwards]


def test_batches_are_shifted_targets_and_seeded(tmp_path):
    write_shards([list(range(i, i + 300)) for i in range(0, 3000, 300)], tmp_path, shard_tokens=1000)
    data = TokenWindows.from_shards(str(tmp_path / "*.bin"), seq_len=8, seed=1)
    x, y = data.batch(5, 4)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(TokenWindows.from_shards(str(tmp_path), 8, seed=1).batch(5, 4)[0], x)
    assert not torch.equal(TokenWindows.from_shards(str(tmp_path), 8, seed=2).batch(5, 4)[0], x)


def test_batch_rows_are_the_windows_at_those_sample_indices():
    arrays = [np.arange(40, dtype=np.uint16), np.arange(23, dtype=np.uint16) + 1000]
    data = TokenWindows(arrays, seq_len=5, seed=3)
    n = len(data)  # 7 + 4 windows per epoch
    for start in (0, 4, n - 2):  # the last crosses into epoch 1
        x, y = data.batch(start, 4)
        for i in range(4):
            window = torch.from_numpy(data.window(start + i))
            assert torch.equal(x[i], window[:-1]) and torch.equal(y[i], window[1:])


def test_unshuffled_windows_are_consecutive_in_shard_order():
    arrays = [np.arange(40, dtype=np.uint16), np.arange(23, dtype=np.uint16) + 1000]
    data = TokenWindows(arrays, seq_len=5, shuffle=False)
    starts = [(0, 5 * k) for k in range(7)] + [(1, 5 * k) for k in range(4)]  # (40 - 1) // 5, (23 - 1) // 5
    assert [data.window(k).tolist() for k in range(len(data))] == [
        arrays[a][s : s + 6].tolist() for a, s in starts]
    assert data.window(len(data)).tolist() == list(range(6))  # epoch 1 starts over, same order


def test_shard_header_must_match_the_file_exactly(tmp_path):
    path = write_shard(tmp_path / "t.bin", np.arange(10))
    path.write_bytes(path.read_bytes() + b"\x00\x00")  # one token more than the header says
    with pytest.raises(ValueError, match="header says 10 tokens"):
        read_shard(path)
    bad = np.zeros(256, dtype="<i4")
    bad[:3] = (20240801, 1, 0)  # a known magic with another format's version: not silently raw
    (tmp_path / "v.bin").write_bytes(bad.tobytes())
    with pytest.raises(ValueError, match="version must be 7 for magic 20240801"):
        read_shard(tmp_path / "v.bin")


def test_write_shards_splits_and_concatenates(tmp_path):
    docs = [list(range(i * 7 % 50, i * 7 % 50 + 13)) for i in range(20)]
    paths = write_shards(docs, tmp_path, shard_tokens=100, prefix="val")
    assert [p.name for p in paths] == [f"val_{i:06d}.bin" for i in range(3)]
    assert [len(read_shard(p)) for p in paths] == [100, 100, 60]
    assert np.concatenate([read_shard(p) for p in paths]).tolist() == sum(docs, [])


def test_cli_tokenizes_text_files_with_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("world", encoding="utf-8")
    paths = shards.main([str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(tmp_path / "out")])
    assert ByteTokenizer().decode(read_shard(paths[0]).tolist()) == "héllo\nworld"


def test_load_tokenizer_errors(tmp_path):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ValueError, match="tokenizer must be 'byte' or a path"):
        load_tokenizer("gpt2")
    with pytest.raises(FileNotFoundError, match="only local files"):
        load_tokenizer(tmp_path / "missing.json")


def test_hf_tokenizer_trained_locally_drives_shards_and_pretraining(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from recipes.train import pretrain
    from recipes.data import embedded_corpus

    text = bytes(embedded_corpus(max_bytes=200_000)[0][:40_000].tolist()).decode("utf-8", errors="ignore")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))

    hf = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(hf, HFTokenizer) and hf.vocab_size == 400 and hf.eos_id == 0
    sample = "def f(x):\n    return x + 1  # ünïcode\n"
    assert hf.decode(hf.encode(sample)) == sample
    assert len(hf.encode(sample)) < len(sample.encode())
    with pytest.raises(ValueError, match="eos_token '<eos>' is not in the vocabulary"):
        HFTokenizer(tmp_path / "tokenizer.json", eos_token="<eos>")

    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    paths = shards.main([str(tmp_path / "doc.txt"), "--out", str(tmp_path / "bin"), "--tokenizer",
                         str(tmp_path / "tokenizer.json")])
    ids = read_shard(paths[0])
    assert ids[0] == hf.eos_id and ids.max() < 400
    losses = pretrain.main(["--config", "tiny", "--set", "d_model=32", "n_layers=2", "n_heads=2", "--seq-len", "16",
                            "--micro-batch", "2", "--steps", "2", "--warmup", "0", "--data", str(tmp_path / "bin"),
                            "--tokenizer", str(tmp_path / "tokenizer.json")])
    assert len(losses) == 2 and abs(losses[0] - np.log(400)) < 0.5  # a 400-way softmax at init
