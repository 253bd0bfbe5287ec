#!/usr/bin/env bash
# Create the project's virtual environment and install kshot with its pipeline and dev tools.
# Idempotent: a second call with an unchanged pyproject.toml does nothing.
# Also installs Debian's dataset-fashion-mnist (the default pipeline's offline data) when it is
# missing and apt-get is usable; without it, set data.fashion_mnist_dir or data.download in params.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "setup: expected Python 3.11 (python3.11 or python3), found $(python3 --version 2>&1)" >&2
  exit 1
fi

stamp="$VENV/.kshot-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "${KSHOT_SKIP_APT:-0}" != 1 ]; then
  if command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    echo "setup: installing Debian's dataset-fashion-mnist"
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 ||
      echo "setup: could not install dataset-fashion-mnist; see README (data.fashion_mnist_dir)" >&2
  fi
fi

# DVC's plots page with Vega inlined, so that `dvc plots show` works offline (npm fetches it once)
if [ ! -f .dvc/plots/offline.html ] && [ "${KSHOT_SKIP_NPM:-0}" != 1 ]; then
  if command -v npm >/dev/null; then
    "$VENV/bin/python" scripts/dvc_plots_template.py ||
      echo "setup: no offline plots page; \`dvc plots show\` loads Vega from its CDN" >&2
  else
    echo "setup: npm not found; \`dvc plots show\` loads Vega from its CDN (scripts/dvc_plots_template.py)" >&2
  fi
fi
