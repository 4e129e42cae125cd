#!/usr/bin/env bash
# Give the browser tests Debian's Chromium (plus CJK fonts, so Chinese pages render) for
# Playwright to drive headless. Playwright's own browser download is never used: the tests
# pass executable_path=/usr/bin/chromium.
#
# Debian/Ubuntu only, run as root. Idempotent: does nothing when chromium is already there.
#
#   bash scripts/ci_chromium.sh             # fail (exit 1) if chromium cannot be installed
#   bash scripts/ci_chromium.sh --optional  # warn and exit 0 instead (the browser tests then skip)
set -euo pipefail
OPTIONAL=0
[ "${1:-}" = "--optional" ] && OPTIONAL=1
say() { echo "ci_chromium: $*"; }

if command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "noto sans cjk"; then
  say "chromium and CJK fonts already installed ($(chromium --version 2>/dev/null || echo unknown))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  [ "$OPTIONAL" = 1 ] && { say "no apt-get; the browser tests will skip"; exit 0; }
  say "ERROR: no apt-get to install chromium"; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-noto-cjk >/dev/null; }; then
  [ "$OPTIONAL" = 1 ] && { say "apt-get failed; the browser tests will skip"; exit 0; }
  say "ERROR: apt-get install chromium fonts-noto-cjk failed"; exit 1
fi
say "installed $(chromium --version 2>/dev/null || echo chromium)"
