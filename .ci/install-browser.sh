#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/test_browser.py) if it is missing.
# Never fails: without a browser the test skips, so CI still runs everything else.
set -u
if [[ -x /usr/bin/chromium ]]; then
    echo "install-browser: /usr/bin/chromium present ($(/usr/bin/chromium --version 2>/dev/null))"
    exit 0
fi
if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: cannot install chromium (needs root and apt-get); the browser test will skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null)"
else
    echo "install-browser: apt-get could not install chromium; the browser test will skip"
fi
exit 0
