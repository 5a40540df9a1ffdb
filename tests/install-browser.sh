#!/usr/bin/env bash
# Installs what the MLflow UI tests (tests/test_mlflow_ui.py) drive: Debian's headless Chromium and
# its driver, at /usr/bin. It is a step of the README's test command, so those tests run on a fresh
# machine as written; where both are installed it does nothing.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  exit 0
fi
fail() { echo "install-browser: $*" >&2; exit 2; }
command -v apt-get >/dev/null ||
  fail "the MLflow UI tests need /usr/bin/chromium and /usr/bin/chromedriver and this machine has no apt-get; install Chromium and its driver there by hand"
sudo=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || fail "installing chromium and chromium-driver needs root, and sudo is missing"
  sudo=(sudo)
fi
echo "install-browser: installing Debian's chromium and chromium-driver for the MLflow UI tests"
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
