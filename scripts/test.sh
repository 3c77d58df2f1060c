#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs them all.
# README.md and .ci/run both use exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kcat >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq kcat >/dev/null || echo "warning: could not install kcat" >&2
  fi
fi
# The PostgreSQL tests start a private server from the Debian package's binaries (initdb, postgres).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null \
      || echo "warning: could not install postgresql; the PostgreSQL tests will fail" >&2
  fi
fi
python3 -m pip install -q -e '.[dev]'
python3 -m ruff check .
python3 -m pytest -q "$@"
