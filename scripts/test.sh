#!/usr/bin/env bash
# Install everything the tests need on Debian 12 (as root), build cwboot with its
# Cython extensions, and run the whole test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m 'not vm and not storm'` to skip the slow ones).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2046
apt-get install -y -q --no-install-recommends $(grep -v '^\s*#' scripts/apt-packages.txt)

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel 'Cython>=3.0'
.venv/bin/pip install -q -e '.[test]'
# Build the extensions in place too, so the source tree imports the accelerated backend.
.venv/bin/python setup.py -q build_ext --inplace
.venv/bin/python -c 'import cwboot.protocol.dhcp as d; print("cwboot DHCP backend:", d.backend)'

exec .venv/bin/python -m pytest "$@"
