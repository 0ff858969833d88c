#!/usr/bin/env bash
# Installs Debian's Chromium for the real-browser tests (tests/browser/) when it is missing and apt
# can be used. Playwright's own browser download does not work here, so the tests drive
# /usr/bin/chromium through Playwright's `executable_path`. If the install fails, the browser tests
# skip themselves and print why; the rest of the suite still runs.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing chromium (apt) for the browser tests" >&2
  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
   echo "[setup] could not install chromium; browser tests will be skipped" >&2
fi
