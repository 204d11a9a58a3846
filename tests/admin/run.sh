#!/usr/bin/env bash
# Runs the admin console test in headless Chromium (tests/admin/admin_test.mjs) with the shared
# browser-test runner and packages of tests/browser (see tests/browser/run.sh for what it needs).
#
#   tests/admin/run.sh
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$HERE/../browser/run.sh" "$HERE/admin_test.mjs"
