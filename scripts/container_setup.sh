#!/usr/bin/env bash
# Make this machine able to build and run the project's containers with rootful Podman, doing only
# what is missing (so it is cheap to call before every test run):
#
#   1. podman, runc and debootstrap from Debian's packages (apt-get update only when installing);
#   2. /etc/containers/containers.conf, when there is none: the runc runtime (crun fails on hosts with
#      hybrid cgroups) and default ulimits that the host allows (Podman's defaults are refused);
#   3. the local base image (scripts/container_base.sh), since no container registry may be reachable.
#
#   scripts/container_setup.sh               all three
#   scripts/container_setup.sh tools         1 and 2 only
#   scripts/container_setup.sh compose-lint  Debian's docker-compose (for `docker-compose config`) and shellcheck
#
# Needs root for whatever it installs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
what="${1:-all}"

apt_updated=0
apt_install() {
  if [[ $EUID -ne 0 ]]; then
    echo "container_setup: $* missing, and installing needs root" >&2
    exit 1
  fi
  if [[ $apt_updated -eq 0 ]]; then
    apt-get update -qq
    apt_updated=1
  fi
  echo "container_setup: apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" > /dev/null
}

need_packages() {  # need_packages COMMAND PACKAGE ...: install the packages of the missing commands
  local missing=()
  while [[ $# -gt 0 ]]; do
    command -v "$1" > /dev/null || missing+=("$2")
    shift 2
  done
  if [[ ${#missing[@]} -gt 0 ]]; then apt_install "${missing[@]}"; fi
}

containers_conf() {
  local conf=/etc/containers/containers.conf
  if [[ -e $conf ]]; then
    grep -q '^runtime *= *"runc"' "$conf" \
      || echo "container_setup: $conf exists and is left alone; it should say runtime = \"runc\" under [engine]" >&2
    return
  fi
  # Never above what this host allows: a ulimit over the hard limit makes every container fail.
  local nofile nproc
  nofile="$(ulimit -Hn)"
  nproc="$(ulimit -Hu)"
  [[ $nofile == unlimited || $nofile -gt 20000 ]] && nofile=20000
  [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
  mkdir -p /etc/containers
  cat > "$conf" << CONF
# Written by vae-service's scripts/container_setup.sh.
[containers]
# Podman's default ulimits are above what this host allows, and runc refuses them.
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
# crun fails on hosts with hybrid cgroups.
runtime = "runc"
CONF
  echo "container_setup: wrote $conf (runc; nofile=$nofile, nproc=$nproc)"
}

case "$what" in
  tools | all)
    need_packages podman podman runc runc debootstrap debootstrap
    containers_conf
    if [[ $what == all ]]; then "$here/container_base.sh"; fi
    ;;
  compose-lint)
    need_packages docker-compose docker-compose shellcheck shellcheck
    ;;
  *)
    echo "usage: $0 [all|tools|compose-lint]" >&2
    exit 2
    ;;
esac
