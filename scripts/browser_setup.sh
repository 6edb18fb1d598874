#!/usr/bin/env bash
# Install Debian's headless browser for the web page's end-to-end tests (tests/service/test_web.py),
# only when it is missing, so it is cheap to call before every test run:
#
#   chromium         /usr/bin/chromium
#   chromium-driver  /usr/bin/chromedriver (the WebDriver that Selenium talks to; the matching version)
#   fonts-dejavu-core  a font, where the machine has none (text would render as nothing)
#
# Selenium must never download a browser or driver of its own (there may be no internet): the tests
# point it at these two binaries. Needs root for whatever it installs.
set -euo pipefail

missing=()
command -v chromium > /dev/null || missing+=(chromium)
command -v chromedriver > /dev/null || missing+=(chromium-driver)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "browser_setup: ${missing[*]} missing, and installing needs root" >&2
  exit 1
fi
if ! command -v apt-get > /dev/null; then
  echo "browser_setup: ${missing[*]} missing, and there is no apt-get to install them" >&2
  exit 1
fi
apt-get update -qq
echo "browser_setup: apt-get install ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
