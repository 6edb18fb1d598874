#!/usr/bin/env bash
# Build the local base image localhost/vae-base:bookworm, for machines that reach no container registry:
# Debian bookworm (debootstrap, minbase) with python3 and python3-venv, imported into Podman.
# It is what `--build-arg BASE_IMAGE=...` replaces python:3.11-slim with.
#
#   scripts/container_base.sh            build it if Podman does not have it yet
#   scripts/container_base.sh --force    build it again
#
# Needs root, podman and debootstrap (scripts/container_setup.sh installs both).
# VAE_LOCAL_BASE_IMAGE names the image; VAE_DEBIAN_MIRROR the mirror (default http://deb.debian.org/debian).
set -euo pipefail

image="${VAE_LOCAL_BASE_IMAGE:-localhost/vae-base:bookworm}"
mirror="${VAE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ "${1:-}" != --force ]] && podman image exists "$image"; then
  echo "container_base: $image is there already"
  exit 0
fi
for tool in debootstrap podman chroot tar; do
  command -v "$tool" > /dev/null || { echo "container_base: $tool is missing (run scripts/container_setup.sh)" >&2; exit 1; }
done

start=$SECONDS
root="$(mktemp -d /var/tmp/vae-base.XXXXXX)"
chmod 0755 "$root"  # apt inside drops to the _apt user, which must reach it
cleanup() {
  # debootstrap mounts /proc and /sys inside while it works: never delete through a mount.
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$root/$m" 2> /dev/null; then umount -l "$root/$m" || true; fi
  done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

echo "container_base: debootstrap bookworm (minbase) from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" > "$root.log" 2>&1 || {
  tail -n 30 "$root.log" >&2
  rm -f "$root.log"
  echo "container_base: debootstrap failed" >&2
  exit 1
}
rm -f "$root.log"

echo "container_base: adding python3 and python3-venv"
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive /bin/sh -euc '
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv > /dev/null
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log /tmp/*
  python3 -m venv --help > /dev/null
'
# The host's resolver is no business of the image: the container engine provides one.
: > "$root/etc/resolv.conf"

echo "container_base: importing $image"
# PATH as Debian's own images set it; an imported file system has no environment at all.
tar --numeric-owner -C "$root" -c . \
  | podman import \
      --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV=LANG=C.UTF-8' \
      --change 'CMD=["bash"]' \
      - "$image" > /dev/null
echo "container_base: built $image in $((SECONDS - start)) s"
