#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/test_demo_browser.py drive it with Playwright).
# Playwright's own browser download (`playwright install`) cannot reach the network here; the tests launch
# /usr/bin/chromium through `executable_path` instead. Idempotent and quiet: does nothing when Chromium is present.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

if [ ! -x /usr/bin/chromium ]; then
    echo "install_browser.sh: apt-get finished but /usr/bin/chromium is missing" >&2
    exit 1
fi
echo "install_browser.sh: $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)"
