"""Quantization quality (SNR, dB) on the same Gaussian and outlier-bearing weights.

The table is printed (``pytest -s``) and kept in kernels/NOTES.md. Only orderings the math
guarantees are asserted: more bits on the same grid, finer nested groups (each group's absmax is at
most its parent's, so every element's error bound shrinks), and per-channel vs per-tensor scales on
weights whose rows differ in range."""

import math

import pytest

from kernels.quality import markdown, snr_db, snr_table, make_weights


@pytest.fixture(scope="module")
def table():
    t = snr_table()
    print("\n" + markdown(t))
    return t


def test_table_complete(table):
    for row in table.values():
        for v in row.values():
            assert math.isfinite(v) and v > 0


@pytest.mark.parametrize("kind", ["gaussian", "outliers"])
def test_orderings(table, kind):
    t = {f: row[kind] for f, row in table.items()}
    assert t["fp16"] > t["bf16"] > t["int8"]          # more mantissa, then 8-bit
    assert t["int8"] > t["int4-g32"]                   # 8 bits vs 4 bits, same or finer scales
    assert t["int4-g32"] >= t["int4-g64"] - 0.05 >= t["int4-g128"] - 0.1
    assert t["int4-g128"] > t["int4"]                  # groups of 128 vs whole rows
    assert t["int8"] >= t["absmax"]                    # per-channel vs per-tensor scale
    assert t["llm-int8"] >= t["int8"] - 0.01           # same grid, fp32 vs fp16 scale


def test_per_channel_beats_per_tensor_on_outlier_rows():
    w = make_weights("gaussian")
    w[::16] *= 30.0  # a few rows with a much larger range
    assert snr_db(w, "int8") > snr_db(w, "absmax") + 10


def test_outliers_hurt_per_channel_int4_most(table):
    drop = {f: table[f]["gaussian"] - table[f]["outliers"] for f in ("int4-g32", "int4")}
    assert drop["int4"] > drop["int4-g32"]


def test_unknown_kind():
    with pytest.raises(ValueError, match="gaussian"):
        make_weights("uniform")
