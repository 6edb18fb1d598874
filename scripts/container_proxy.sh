#!/bin/sh
# Entrypoint of the proxy image: nginx on 8080 in front of every replica of the `serve` service.
#
#   VAE_PROXY_UPSTREAM   host:port to spread requests over (default serve:8000)
#   VAE_PROXY_RESOLVER   the DNS server that knows the replicas (default: the first nameserver in
#                        /etc/resolv.conf: Docker's 127.0.0.11, or Podman's aardvark-dns)
set -eu

upstream="${VAE_PROXY_UPSTREAM:-serve:8000}"
resolver="${VAE_PROXY_RESOLVER:-}"
if [ -z "$resolver" ]; then
  while read -r key value _; do
    if [ "$key" = nameserver ]; then
      resolver="$value"
      break
    fi
  done < /etc/resolv.conf
fi
if [ -z "$resolver" ]; then
  echo "vae-proxy: no nameserver in /etc/resolv.conf: set VAE_PROXY_RESOLVER" >&2
  exit 1
fi
case "$resolver" in
  *:*) resolver="[$resolver]" ;;  # an IPv6 address
esac

sed -e "s|@RESOLVER@|$resolver|" -e "s|@UPSTREAM@|$upstream|" /etc/vae/nginx.conf.template > /tmp/nginx.conf
echo "vae-proxy: spreading requests over $upstream (resolver $resolver)" >&2
exec nginx -e stderr -c /tmp/nginx.conf -g 'daemon off;'
