"""Benchmark the weight-only kernels on a GPU against cuBLAS fp16 and torch's int4/int8 kernels.

    python -m kernels.bench                       # all shapes x batches, table + CSV
    python -m kernels.bench --dry-run             # the roofline table only (runs on CPU)
    python -m kernels.bench --shapes 4096x4096 --batches 1,16 --formats int4-g128

Shapes are N x K = out_features x in_features (``--transpose`` also runs K x N). For each shape and
batch M every candidate runs in the same process, on the same x: ``torch.matmul`` fp16 (cuBLAS,
via F.linear), each ``kernels.matmul`` format, ``torch._weight_int8pack_mm`` and
``torch._weight_int4pack_mm`` (tinygemm, bf16 x, group 128) where this torch build runs them on
CUDA. Timing: CUDA events around each call, the L2 flushed before each by writing a 256 MiB
buffer, median of ``--iters`` runs after ``--warmup`` (the first call autotunes the Triton
kernels). Achieved bandwidth counts the bytes a call must move: packed weight (the registry's
bytes) + x + y. Without CUDA the benchmark exits with code 2 and one line (``--dry-run`` still works).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys

H100_SXM_BANDWIDTH = 3.35e12
"""H100 SXM HBM3 bandwidth, bytes/s (NVIDIA datasheet)."""
H100_SXM_FP16_FLOPS = 989.4e12
"""H100 SXM dense fp16/bf16 tensor-core throughput, FLOP/s (NVIDIA datasheet, without sparsity)."""
DEFAULT_SHAPES = ("4096x4096", "4096x14336", "8192x8192", "8192x28672", "16384x16384", "32768x8192")
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_FORMATS = ("int8", "int4", "int4-g128", "int4-g128-zp")
L2_FLUSH_BYTES = 256 * 2 ** 20


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            n, k = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {item!r} is not NxK (e.g. 4096x14336)")
        if n < 1 or k < 1:
            raise argparse.ArgumentTypeError(f"shape {item!r} must be positive")
        out.append((n, k))
    return out


def _parse_ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    if any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: batches must be >= 1")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=_parse_shapes, default=_parse_shapes(",".join(DEFAULT_SHAPES)),
                   help="comma-separated NxK (out x in); default: %(default)s")
    p.add_argument("--transpose", action="store_true", help="also run every shape as KxN")
    p.add_argument("--batches", type=_parse_ints, default=list(DEFAULT_BATCHES),
                   help="comma-separated batch sizes M; default: 1,2,...,256")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help="comma-separated registry keys run through kernels.matmul")
    p.add_argument("--bandwidth", type=float, default=H100_SXM_BANDWIDTH,
                   help="card memory bandwidth in bytes/s (default H100 SXM 3.35e12)")
    p.add_argument("--peak-flops", type=float, default=H100_SXM_FP16_FLOPS,
                   help="card dense fp16 FLOP/s for the roofline (default H100 SXM 989.4e12)")
    p.add_argument("--iters", type=int, default=100, help="timed runs per candidate (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (autotuning)")
    p.add_argument("--csv", default="kernels_bench.csv", help="CSV output path")
    p.add_argument("--dry-run", action="store_true",
                   help="print the roofline table and exit (no GPU needed)")
    return p


def _all_shapes(args) -> list[tuple[int, int]]:
    shapes = list(args.shapes)
    if args.transpose:
        shapes += [(k, n) for n, k in args.shapes if (k, n) not in shapes]
    return shapes


def roofline_rows(shapes, batches, formats, bandwidth, peak_flops) -> list[dict]:
    """Bytes moved, FLOPs and floor time (max of memory and compute time) per shape, batch, format."""
    from kernels.formats import parse_key
    rows = []
    for n, k in shapes:
        for m in batches:
            flops = 2 * m * n * k
            for key in ("fp16",) + tuple(formats):
                fmt = parse_key(key)
                moved = fmt.nbytes(n, k) + 2 * m * k + 2 * m * n
                floor = max(moved / bandwidth, flops / peak_flops)
                rows.append({"n": n, "k": k, "m": m, "format": key, "bytes": moved,
                             "flops": flops, "floor_us": floor * 1e6,
                             "bound": "memory" if moved / bandwidth >= flops / peak_flops
                             else "compute"})
    return rows


def print_roofline(rows, formats) -> None:
    by = {}
    for r in rows:
        by.setdefault((r["n"], r["k"], r["m"]), {})[r["format"]] = r
    cols = ("fp16",) + tuple(formats)
    head = f"{'N x K':>13} {'M':>4} {'GFLOP':>8} " + " ".join(f"{c + ' us':>16}" for c in cols)
    print("roofline floor per call (max of bytes/bandwidth and FLOPs/peak); bytes = weight + x + y")
    print(head)
    for (n, k, m), d in by.items():
        cells = " ".join(f"{d[c]['floor_us']:>12.1f}{'(c)' if d[c]['bound'] == 'compute' else '   '} "
                         for c in cols)
        print(f"{n:>6}x{k:<6} {m:>4} {2 * m * n * k / 1e9:>8.2f} {cells}")
    print("(c) = compute-bound at the peak; otherwise memory-bound")


def _time(fn, flush, iters: int, warmup: int) -> float:
    import torch
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3


def _torch_int4pack(w16, group: int = 128):
    """tinygemm operands for W (fp16 [N, K]): packed weight and bf16 scales_and_zeros."""
    import torch
    n, k = w16.shape
    wg = w16.float().reshape(n, k // group, group)
    lo, hi = wg.amin(2), wg.amax(2)
    scale = ((hi - lo) / 15).clamp_min(1e-6)
    u = torch.clamp(torch.round((wg - lo[..., None]) / scale[..., None]), 0, 15).to(torch.uint8)
    u = u.reshape(n, k)
    packed = (u[:, 0::2] << 4 | u[:, 1::2]).contiguous()
    wp = torch._convert_weight_to_int4pack(packed, 8)
    zero = lo + 8 * scale  # tinygemm: w = (q - 8) * scale + zero
    sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
    return wp, sz


def run(args) -> int:
    import torch
    import torch.nn.functional as F

    import kernels
    from kernels.formats import parse_key

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    dev = torch.device("cuda")
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=dev)
    results = []
    print(f"device: {torch.cuda.get_device_name(dev)}; bandwidth {args.bandwidth:.3g} B/s; "
          f"torch {torch.__version__}")
    hdr = (f"{'N x K':>13} {'M':>4} {'kernel':<28} {'us':>9} {'vs fp16':>8} {'GB/s':>8} "
           f"{'%BW':>6}")
    print(hdr)
    for n, k in _all_shapes(args):
        torch.manual_seed(0)
        w16 = (torch.randn(n, k, device=dev) * 0.02).to(torch.float16)
        packs = {f: kernels.quantize(w16, f) for f in formats}
        extra = {}
        try:
            q8 = packs.get("int8") or kernels.quantize(w16, "int8")
            extra["torch-int8pack"] = (q8["qweight"], q8["scale"])
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            print(f"  torch-int8pack operands: {exc}")
        try:
            extra["torch-int4pack-g128"] = _torch_int4pack(w16)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            print(f"  torch-int4pack operands: {type(exc).__name__}: {str(exc)[:100]}")
        for m in args.batches:
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            xb = x.to(torch.bfloat16)
            cands = [("cublas-fp16", lambda: F.linear(x, w16), 2 * n * k)]
            for f, p in packs.items():
                cands.append((f, (lambda p=p: kernels.matmul(x, p)), parse_key(f).nbytes(n, k)))
            if "torch-int8pack" in extra:
                q, s = extra["torch-int8pack"]
                cands.append(("torch-int8pack", lambda: torch._weight_int8pack_mm(x, q, s),
                              n * k + 2 * n))
            if "torch-int4pack-g128" in extra:
                wp, sz = extra["torch-int4pack-g128"]
                cands.append(("torch-int4pack-g128",
                              lambda: torch._weight_int4pack_mm(xb, wp, 128, sz),
                              n * k // 2 + 4 * n * (k // 128)))
            base = None
            for name, fn, wbytes in cands:
                try:
                    fn()
                    label = f"{name}:{kernels.last_kernel()}" if name in packs else name
                    t = _time(fn, flush, args.iters, args.warmup)
                except Exception as exc:  # noqa: BLE001 - a baseline this build lacks
                    print(f"{n:>6}x{k:<6} {m:>4} {name:<28} n/a ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:60]})")
                    continue
                if base is None:
                    base = t
                moved = wbytes + 2 * m * k + 2 * m * n
                gbs = moved / t / 1e9
                row = {"n": n, "k": k, "m": m, "kernel": label, "time_us": t * 1e6,
                       "speedup_vs_fp16": base / t, "bytes": moved, "gb_per_s": gbs,
                       "frac_bandwidth": moved / t / args.bandwidth}
                results.append(row)
                print(f"{n:>6}x{k:<6} {m:>4} {label:<28} {t * 1e6:>9.1f} {base / t:>7.2f}x "
                      f"{gbs:>8.0f} {100 * row['frac_bandwidth']:>5.1f}%")
        del w16, packs, extra
        torch.cuda.empty_cache()
    with open(args.csv, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(results[0]) if results else ["n"])
        wr.writeheader()
        wr.writerows(results)
    print(f"wrote {len(results)} rows to {args.csv}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    from kernels.formats import parse_key
    for f in formats:
        try:
            parse_key(f)
        except ValueError as exc:
            print(f"kernels.bench: {exc}", file=sys.stderr)
            return 2
    if args.dry_run:
        print_roofline(roofline_rows(_all_shapes(args), args.batches, formats, args.bandwidth,
                                     args.peak_flops), formats)
        return 0
    import torch
    if not torch.cuda.is_available():
        print("kernels.bench: no CUDA device; the benchmark needs a GPU (use --dry-run for the "
              "roofline table)", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
