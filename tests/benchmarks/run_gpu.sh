#!/usr/bin/env bash
# GPU benchmarks: parity of the compiled Triton kernels, then the full grid, then the results page.
# Run from the repository root on a CUDA machine with the package installed (pip install -e ".[dev]").
# Usage: bash tests/benchmarks/run_gpu.sh [extra pytest args]   (results: tests/benchmarks/results/gpu.json)
set -euo pipefail
cd "$(dirname "$0")/../.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
python -c "import triton" 2>/dev/null || python -m pip install -q "triton>=3.0"
python -m pytest tests/test_kernels.py tests/test_fsdp_accelerate.py -m gpu -q -p no:cacheprovider
mkdir -p tests/benchmarks/results
python -m pytest tests/benchmarks --benchmark-enable --bench-device cuda --bench-set full \
    --benchmark-json=tests/benchmarks/results/gpu.json -q -p no:cacheprovider "$@"
results=(tests/benchmarks/results/gpu.json)
[[ -f tests/benchmarks/results/cpu.json ]] && results=(tests/benchmarks/results/cpu.json "${results[@]}")
python tests/benchmarks/report.py "${results[@]}" > BENCHMARKS.md
echo "wrote BENCHMARKS.md from ${results[*]}"
