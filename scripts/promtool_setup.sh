#!/usr/bin/env bash
# Install promtool from Debian's prometheus package, only when it is missing, so it is cheap to call before
# every test run. tests/service/test_metrics_format.py runs `promtool check metrics` on /metrics. The
# package also ships the Prometheus server as a service: it is installed without being started (a
# policy-rc.d that refuses every start, Debian's documented switch, for the length of the install) and
# without its recommended node exporter. Needs root for the install.
set -euo pipefail

if command -v promtool > /dev/null; then
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "promtool_setup: promtool is missing, and installing it needs root" >&2
  exit 1
fi
if ! command -v apt-get > /dev/null; then
  echo "promtool_setup: promtool is missing, and there is no apt-get to install it" >&2
  exit 1
fi
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
echo "promtool_setup: apt-get install prometheus (for promtool; the service is not started)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus > /dev/null
command -v promtool > /dev/null
