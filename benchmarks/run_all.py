"""Run every benchmark in turn (``make bench``); pass ``--quick`` for the small versions.

Run them on an otherwise idle machine: two PyTorch processes sharing two cores slow each other
down many times over (OpenMP threads spin), which says nothing about the code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = ["bench_foundation.py", "bench_thoughts_layer.py", "bench_think.py", "bench_diffusion.py", "bench_smollm2.py"]


def main() -> int:
    here = Path(__file__).parent
    rc = 0
    for s in SCRIPTS:
        print(f"\n=== {s}", flush=True)
        rc |= subprocess.call([sys.executable, str(here / s), *sys.argv[1:]])
    return rc


if __name__ == "__main__":
    sys.exit(main())
