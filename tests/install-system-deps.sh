#!/usr/bin/env bash
# Installs the Debian packages some tests drive: headless Chromium and its driver for the MLflow UI
# tests (tests/test_mlflow_ui.py), PostgreSQL for the search against a real database
# (tests/test_postgres.py). A step of the README's test command, so those tests run on a fresh
# machine as written; where everything is installed it does nothing.
set -euo pipefail
packages=()
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || packages+=(chromium chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || packages+=(postgresql)
if [[ ${#packages[@]} -eq 0 ]]; then
  exit 0
fi
fail() { echo "install-system-deps: $*" >&2; exit 2; }
command -v apt-get >/dev/null ||
  fail "the tests need ${packages[*]} and this machine has no apt-get: install them by hand"
sudo=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || fail "installing ${packages[*]} needs root, and sudo is missing"
  sudo=(sudo)
fi
echo "install-system-deps: installing Debian's ${packages[*]} for the tests"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
