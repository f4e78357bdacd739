"""Every CUDA ending, built, checked and timed in one go (a benchmark, not a
test; run it on a machine with an NVIDIA GPU, nvcc and torch):

    python tests/benchmarks/cuda_bench.py [--repeats N] [--json FILE] [--cu DIR] [SCRIPT:SIZES[:bf16] ...]

For each case: `otp bench SCRIPT --target cuda --compare torch --json` at
the case's sizes (nvcc build, outputs checked against the original C at the
script's small sizes and against torch at the bench sizes, CUDA-event
timing, median of the runs, torch in the same process on the same inputs,
TF32 off); a case marked bf16 runs with --precision bf16 (attention.py's
bfloat16 tiles, against torch's FlashAttention-2 on bfloat16 inputs;
gqa_decode.py's caches held in bfloat16, against torch's SDPA on the same
bfloat16 caches). Prints a table last; `--json` keeps every report, `--cu`
the emitted kernels (otp run --target cuda)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = [
    ("scripts/matmul.py", "M=4096,N=4096,K=4096"),
    ("scripts/matmul.py", "M=1000,N=1000,K=1000"),
    ("scripts/softmax.py", "R=4096,C=4096"),
    ("scripts/attention.py", "H=8,S=4096,D=64"),
    ("scripts/attention.py", "H=32,S=4096,D=64"),
    ("scripts/attention.py", "H=32,S=4096,D=128"),
    ("scripts/attention.py", "H=32,S=4096,D=128", "bf16"),
    ("scripts/gqa_decode.py", "H=32,KVH=8,D=128,SMAX=4096,pos=4095"),
    # batch 8 of 32 query heads over 8 kv heads: the same computation as one
    # batch of 256 over 64, since caches laid out [batch][kv head][position]
    # are [batch * kv head][position] and query head b * 32 + h reads kv head
    # b * 8 + h / 4 = (b * 32 + h) / 4
    ("scripts/gqa_decode.py", "H=256,KVH=64,D=128,SMAX=4096,pos=4095"),
    ("scripts/gqa_decode.py", "H=32,KVH=8,D=128,SMAX=4096,pos=4095", "bf16"),
    ("scripts/gqa_decode.py", "H=256,KVH=64,D=128,SMAX=4096,pos=4095", "bf16"),
    ("scripts/quantize.py", "N=4096,D=4096"),
]


def _otp(precision: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "optitrust_py", *args, "--precision", precision], cwd=ROOT,
                          capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", default="30")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--cu", dest="cu_dir")
    ap.add_argument("cases", nargs="*", help="script:sizes[:bf16] (default: every case of CASES)")
    opts = ap.parse_args()
    reports, failed = [], 0
    for script, sizes, *precision in [tuple(c.split(":")) for c in opts.cases] or CASES:
        fp = "".join(precision) or "fp32"
        if opts.cu_dir:
            _otp(fp, "run", script, "--target", "cuda", "--quiet", "--no-color", "--out", f"{opts.cu_dir}/{fp}")
        r = _otp(fp, "bench", script, "--target", "cuda", "--compare", "torch", "--json", "--size", sizes,
                 "--repeats", opts.repeats)
        try:
            report = json.loads(r.stdout)
        except json.JSONDecodeError:
            report = {"script": script, "sizes": sizes, "failure": (r.stderr or r.stdout).strip()[-2000:]}
        report["precision"] = fp
        failed += bool(report.get("failure")) or r.returncode != 0
        reports.append(report)
        print(json.dumps(report), flush=True)
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(reports, indent=1))
    print(f"\n{'script':20} {'fp':5} {'sizes':24} {'GPU ms':>9} {'rate':>9} {'torch ms':>9} {'rate':>9} "
          f"{'vs torch':>8}  unit")
    for rep in reports:
        if rep.get("failure"):
            print(f"{rep['script']:20} {rep['precision']:5} FAILED: {rep['failure'][:300]}")
            continue
        unit = "GFLOP/s" if rep["unit"] == "flops" else "GB/s"
        sizes = ",".join(f"{k}={v}" for k, v in rep["sizes"].items())
        g, t = rep["gpu"], rep["torch"]
        print(f"{rep['script']:20} {rep['precision']:5} {sizes:24} {g['median_s'] * 1e3:9.3f} {g['rate']:9.1f} "
              f"{t['median_s'] * 1e3:9.3f} {t['rate']:9.1f} {rep['ratio_vs_torch']:8.2f}  {unit}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
