#!/usr/bin/env bash
# Installs what the browser conformance test (tests/tests/browser_eventsource.rs)
# needs, when it is missing: Debian's chromium (never a browser build that
# playwright would download) and the npm packages pinned in package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
    echo "install.sh: /usr/bin/chromium missing, installing Debian's chromium" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install.sh: npm missing, installing Debian's nodejs and npm" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi

# playwright-core downloads nothing on install; the variable makes sure.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
