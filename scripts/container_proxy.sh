#!/bin/sh
# Entrypoint of the proxy image: nginx in front of every replica of the `serve` service.
#
#   VAE_PROXY_UPSTREAM    host:port to spread requests over (default serve:8000)
#   VAE_PROXY_RESOLVER    the DNS server that knows the replicas (default: the first nameserver in
#                         /etc/resolv.conf: Docker's 127.0.0.11, or Podman's aardvark-dns)
#   VAE_PROXY_PER_CLIENT  connections at once per client address; more get 429 (default 32)
#   VAE_PROXY_LISTEN      the port nginx listens on (default 8080)
#   VAE_PROXY_DIR         where nginx.conf, the pid file and the temporary files go (default /tmp)
#   VAE_PROXY_TEMPLATE    the config template (default /etc/vae/nginx.conf.template)
# The last three let tests/test_proxy.py run this same script and config outside a container.
set -eu

upstream="${VAE_PROXY_UPSTREAM:-serve:8000}"
resolver="${VAE_PROXY_RESOLVER:-}"
per_client="${VAE_PROXY_PER_CLIENT:-32}"
listen="${VAE_PROXY_LISTEN:-8080}"
dir="${VAE_PROXY_DIR:-/tmp}"
template="${VAE_PROXY_TEMPLATE:-/etc/vae/nginx.conf.template}"
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
for number in "$per_client" "$listen"; do
  case "$number" in
    ''|*[!0-9]*|0) echo "vae-proxy: VAE_PROXY_PER_CLIENT and VAE_PROXY_LISTEN must be positive integers, got '$number'" >&2; exit 1 ;;
  esac
done

sed -e "s|@RESOLVER@|$resolver|" -e "s|@UPSTREAM@|$upstream|" -e "s|@PER_CLIENT@|$per_client|g" \
    -e "s|@LISTEN@|$listen|" "$template" > "$dir/nginx.conf"
echo "vae-proxy: spreading requests over $upstream (resolver $resolver), at most $per_client connections per client" >&2
exec nginx -e stderr -p "$dir/" -c "$dir/nginx.conf" -g 'daemon off;'
