#!/usr/bin/env bash
# Install cwboot on Debian 12 (as root) and run a head node serving a demo
# cluster on loopback with the embedded store: it prints what listens where,
# boots simulated nodes through itself, and keeps serving until Ctrl-C.
# Extra arguments go to `cwboot demo` (see `cwboot demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends python3-venv python3-dev gcc ipxe zstd

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel 'Cython>=3.0'
.venv/bin/pip install -q -e .
.venv/bin/python setup.py -q build_ext --inplace

exec .venv/bin/cwboot demo "$@"
