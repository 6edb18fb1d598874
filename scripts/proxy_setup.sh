#!/usr/bin/env bash
# Install Debian's nginx, the same package as the proxy image's (Dockerfile target `proxy`), only when it
# is missing, so it is cheap to call before every test run. tests/test_proxy.py runs it against a real
# `vae serve` with the image's own entrypoint and config (scripts/container_proxy.sh,
# scripts/nginx.conf.template), without building an image. Needs root for the install.
set -euo pipefail

if command -v nginx > /dev/null || [[ -x /usr/sbin/nginx ]]; then
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "proxy_setup: nginx is missing, and installing it needs root" >&2
  exit 1
fi
if ! command -v apt-get > /dev/null; then
  echo "proxy_setup: nginx is missing, and there is no apt-get to install it" >&2
  exit 1
fi
apt-get update -qq
echo "proxy_setup: apt-get install nginx"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx > /dev/null
