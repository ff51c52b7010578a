#!/usr/bin/env bash
# Gathers into ./.whl the Python 3.12 wheels that a GPU box with PyTorch, xarray, numpy, pandas
# and the usual scientific stack (but no package registry) lacks to run the product path:
# `stpipe ingest | train | evaluate | forecast | nightly` with Prefect (no server) and MLflow
# tracking on SQLite. The versions are the ones this checkout is tested with (read from the
# local environment when it has them), so the box runs what CI runs.
#
# It leaves out Prefect's notification back ends (apprise), which the product path never
# imports, to fit a 64 MiB transfer. Everything else is needed: Prefect's ephemeral server
# imports asyncpg, redis and burner-redis (its task queue), MLflow's SQLite registry imports
# cryptography, and MLflow looks up `databricks.agents` on import.
# Install on the box with:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   python3 -m compileall -q -j 0 stpipe
#   export PYTHONPATH=/tmp/site:$PWD
# Keep the compilation: the box's image sets PYTHONDONTWRITEBYTECODE=1, so without it every
# process compiles what it imports (the ingest's worker launcher took 3.4-5.3 s instead of
# 2.4-2.8; benchmarks/results/bench_ingest_h200.log).
# Usage, from the repository root:  bash benchmarks/gpu_wheels.sh [--have LIST_FILE]
# LIST_FILE: names of the packages already on the box, one a line (default: the list below).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

python=${PYTHON:-.venv/bin/python}
pin() { # NAME -> NAME==VERSION as installed here, else NAME
  "$python" -m pip show "$1" 2>/dev/null | awk -v n="$1" '/^Version:/ {print n "==" $2; f=1} END {if (!f) print n}'
}
wanted=(prefect mlflow-skinny sqlalchemy alembic zarr numcodecs dask distributed netCDF4 cftime
  pydantic tomli-w psutil)
pins=()
for name in "${wanted[@]}"; do pins+=("$(pin "$name")"); done

# Already on the GPU box (its image 'cuda'): never carried.
box_has="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler filelock fonttools frozenlist
fsspec h11 h5py httpcore httpx humanize idna jinja2 joblib kiwisolver markdown markdown-it-py
markupsafe matplotlib mdurl msgpack multidict networkx numpy packaging pandas pathspec pillow
pip pluggy prometheus-client propcache protobuf psutil pyarrow pygments pyparsing
python-dateutil pyyaml regex requests rich scipy setuptools shellingham six sortedcontainers
sympy tabulate toolz torch tqdm typer typing-extensions urllib3 uvloop werkzeug wheel wrapt
xarray yarl zipp"
if [[ "${1:-}" == "--have" ]]; then box_has=$(cat "$2"); fi
never="apprise"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$tmp" "${pins[@]}"
rm -rf .whl && mkdir .whl
norm() { echo "$1" | tr 'A-Z_.' 'a-z--'; }
skip=" $(for n in $box_has $never; do norm "$n"; done | tr '\n' ' ') "
for wheel in "$tmp"/*.whl; do
  name=$(norm "$(basename "$wheel" | cut -d- -f1)")
  [[ "$skip" == *" $name "* ]] || cp "$wheel" .whl/
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl" >&2
