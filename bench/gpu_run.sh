#!/usr/bin/env bash
# GPU checks recorded in docs/gpu.md, in two steps.
#
#   bash bench/gpu_run.sh bundle   # HERE (no GPU, needs pip + network): the sweep's Python packages that
#                                  # the GPU machine lacks, as one stripped tarball .gpu/site.tar.xz (< 64 MiB)
#   bash bench/gpu_run.sh          # ON THE GPU MACHINE (device tool: carry [".gpu"]): unpacks it into
#                                  # /tmp/site, then bench/step.py at width 1.0 on cuda, the CUDA attack
#                                  # tests, and a smoke sweep with --gpus-per-trial 0.25 with nvidia-smi
#                                  # sampled every 500 ms; everything lands in $OUT (<= 8 files).
#   bash bench/gpu_run.sh step     # ON THE GPU MACHINE, no carry: only bench/step.py at width 1.0 on cuda,
#                                  # default, --autocast bf16, --resident and both (issue 18; docs/gpu.md)
#   bash bench/gpu_run.sh busy     # ON THE GPU MACHINE (carry [".gpu"]): only bench/gpu.py, 8 trials packed
#                                  # 4 per GPU on svhn_synthetic at width 1.0 (issue 18: utilisation)
#
# The GPU machine (python3.12, torch 2.11, numpy, pandas, scipy, ... but no ray/optuna/mlflow/attack
# libraries, no network) gets exactly the set below; each one was found missing by importing the sweep's
# modules in a python3.12 venv holding only what that machine has (see docs/gpu.md).
set -u
cd "$(dirname "$0")/.."

PKGS=(
  ray==2.60.0 optuna==5.0.0 mlflow-skinny==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 colorlog==6.12.0
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions==0.66b2
  fastapi==0.165.0 starlette==1.10.0 databricks-sdk==0.162.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
  cachetools==7.3.3 importlib-metadata==9.1.0 sqlparse==0.6.1 python-dotenv==1.2.4
  pyautoattack==0.2.0 foolbox==3.3.4 eagerpy==0.30.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  psutil==7.2.2 nvidia-ml-py==13.615.71
)
# Not needed by a local sweep (include_dashboard=False, no Java, no RLlib/Serve/LLM) or data files
# (pyautoattack's 45 MB example model): dropped so the tarball fits one device call. xz, not zstd: the GPU
# machine surely has xz (Python's lzma too). Measured: 261 MB unpacked; zstd -12 gave 55.7 MB.
STRIP=(ray/jars ray/dashboard/client ray/rllib ray/serve ray/llm pyautoattack/examples advertorch_examples bin)

if [ "${1:-}" = bundle ]; then
  set -e
  mkdir -p .whl .gpu
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "${PKGS[@]}"
  python3 -m pip wheel -q --no-deps -w .whl advertorch==0.2.3  # sdist only on PyPI; pure Python
  stage=$(mktemp -d)
  python3 -m pip install -q --no-deps --no-index --no-compile --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plat[@]}" --target "$stage" .whl/*.whl
  (cd "$stage" && rm -rf "${STRIP[@]}" && find . -name __pycache__ -prune -exec rm -rf {} + &&
   strip --strip-unneeded ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server)  # symbol tables: 34 MB
  tar -C "$stage" -cf - . | xz -T0 -6 > .gpu/site.tar.xz
  rm -rf "$stage"
  ls -la .gpu/site.tar.xz
  exit 0
fi

# ----------------------------------------------------------------------------- on the GPU machine
if [ "${1:-}" = step ]; then  # issue 18 only: bench/step.py with the step options (torch + addd, no carry)
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
  mkdir -p "${OUT:-/tmp/gpu_out}"
  for opts in "" "--autocast bf16" "--resident" "--autocast bf16 --resident"; do
    echo "=== bench/step.py --device cuda --width 1.0 --repeats 20 $opts"
    timeout 120 python3 bench/step.py --device cuda --width 1.0 --repeats 20 $opts
  done 2>&1 | tee "${OUT:-/tmp/gpu_out}/step.log"
  exit 0
fi
O=${OUT:-/tmp/gpu_out}
mkdir -p "$O" /tmp/site
LOG=$O/gpu.log
exec > >(tee -a "$LOG") 2>&1
t0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - t0 ))s] $*"; }

stamp unpack
if [ -f .gpu/site.tar.xz ]; then tar -xJf .gpu/site.tar.xz -C /tmp/site || exit 1
elif [ -f .gpu/site.tar.zst ] && command -v zstd >/dev/null; then zstd -dc .gpu/site.tar.zst | tar -xf - -C /tmp/site || exit 1
elif [ -f .gpu/site.tar.zst ] && ls .gpu/zst/zstandard-*.whl >/dev/null 2>&1; then  # no zstd there: python-zstandard
  python3 -m zipfile -e .gpu/zst/zstandard-*.whl /tmp/zst &&
  PYTHONPATH=/tmp/zst python3 -c "import sys, zstandard; zstandard.ZstdDecompressor().copy_stream(open('.gpu/site.tar.zst', 'rb'), sys.stdout.buffer)" |
    tar -xf - -C /tmp/site || exit 1
else echo "no .gpu/site.tar.xz (or .zst with zstd there): run 'bash bench/gpu_run.sh bundle' here first"; exit 1; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if [ "${1:-}" = busy ]; then
  stamp "bench/gpu.py (trials per GPU-hour, SM utilisation from the trials' MLflow system metrics)"
  timeout "${BUSY_TIMEOUT:-480}" python3 bench/gpu.py --trials-per-gpu 4 --num-samples 8 --epochs 2
  echo "bench exit: $?"
  exit 0
fi
python3 -c "import sys, torch, scipy, ray, optuna, mlflow, advertorch, foolbox, pyautoattack; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'scipy', scipy.__version__, 'ray', ray.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__)"

stamp "bench/step.py --device cuda --width 1.0"
timeout 150 python3 bench/step.py --device cuda --width 1.0 --repeats 20
timeout 60 python3 bench/step.py --device cuda --width 1.0 --batch-size 64 --repeats 20

stamp "CUDA attack tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_attacks.py -k cuda -rs

stamp "smoke sweep, --gpus-per-trial 0.25"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 500 > "$O/smi.csv" &
smi=$!
( while sleep 0.5; do nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | sed "s/^/$(date +%s.%N), /"; done ) > "$O/apps.csv" &
apps=$!
RUN=/tmp/run
timeout "${SWEEP_TIMEOUT:-300}" python3 sweeps/run.py --space "${SPACE:-digits_ablation}" --smoke --gpus-per-trial 0.25 \
  --cpus-per-trial 1 --no-study --run-dir "$RUN" --cache-dir /tmp/cache --data-root /tmp/data
echo "sweep exit: $?"
kill "$smi" "$apps" 2>/dev/null
cp "$RUN/events.jsonl" "$O/" 2>/dev/null
cp "$RUN"/summary*.md "$O/" 2>/dev/null

stamp "trial overlap and GPU utilisation"
python3 - "$O" <<'EOF'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
ev = [json.loads(l) for l in (out / "events.jsonl").read_text().splitlines()] if (out / "events.jsonl").exists() else []
span = {}
for e in ev:
    s = span.setdefault(e["trial_id"], [e["time"], e["time"], e["pid"]])
    s[0], s[1] = min(s[0], e["time"]), max(s[1], e["time"])
points = sorted([(a, 1) for a, b, _ in span.values()] + [(b, -1) for a, b, _ in span.values()], key=lambda p: (p[0], p[1]))
now = peak = 0
for _, d in points:
    now += d
    peak = max(peak, now)
print(f"trials {len(span)}, at most {peak} running at once, worker pids {sorted({p for *_, p in span.values()})}")
if span:
    t0 = min(a for a, _, _ in span.values()); t1 = max(b for _, b, _ in span.values())
    print(f"trial phase {t1 - t0:.1f}s (first start to last event)")
    for tid, (a, b, pid) in sorted(span.items(), key=lambda kv: kv[1][0]):
        print(f"  {tid} pid {pid} {a - t0:7.1f}s .. {b - t0:7.1f}s")
    import time
    from datetime import datetime
    rows = []  # (epoch seconds, utilization %, memory MiB); nvidia-smi prints local time
    with open(out / "smi.csv") as fh:
        for r in list(csv.reader(fh))[1:]:
            try:
                t = time.mktime(datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timetuple())
                rows.append((t, int(r[1].split()[0]), int(r[2].split()[0])))
            except (ValueError, IndexError):
                continue
    during = [r for r in rows if t0 <= r[0] <= t1]
    for name, sel in (("whole sweep", rows), ("trial phase", during)):
        u = [r[1] for r in sel]
        m = [r[2] for r in sel]
        print(f"nvidia-smi {name}: {len(u)} samples, utilization.gpu mean {sum(u) / max(1, len(u)):.0f}%, "
              f"max {max(u, default=0)}%, memory.used max {max(m, default=0)} MiB")
if (out / "apps.csv").exists():
    by_t = {}
    for line in (out / "apps.csv").read_text().splitlines():
        t, pid, *_ = [x.strip() for x in line.split(",")]
        by_t.setdefault(t, set()).add(pid)
    print(f"most CUDA processes seen at once (nvidia-smi --query-compute-apps): {max(map(len, by_t.values()), default=0)}")
EOF
stamp done
