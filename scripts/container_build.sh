#!/usr/bin/env bash
# Build the images that docker-compose.yml runs, with the flags this kind of machine needs:
#
#   scripts/container_build.sh [TARGET ...]     TARGETs of the Dockerfile; default: serve train proxy
#
# Images are tagged localhost/vae-TARGET:latest (what compose's vae-TARGET:latest resolves to). All
# targets get the same build arguments, so the layers they share are built once and cached.
#
#   CONTAINER_ENGINE      podman (default) or docker
#   VAE_BASE_IMAGE        base image (default python:3.11-slim; localhost/vae-base:bookworm where no
#                         registry is reachable: scripts/container_base.sh builds it)
#   VAE_CA_BUNDLE         CA bundle given to pip as the build secret `ca` (default: the `cert` of this
#                         host's pip, if it has one), for proxies that re-sign TLS
#   VAE_PIP_FIND_LINKS    a folder of wheels, mounted into the build and given to pip (default: this
#                         host's pip `find-links`, if it is a folder); podman only
#   VAE_TORCH_INDEX_URL   where torch comes from (default: the PyTorch CPU index, or nothing when the
#                         wheel folder holds a CPU torch wheel: then torch is taken from there)
#   VAE_PIP_INDEX_URL     PyPI or a mirror of it
#   VAE_BUILD_ARGS        more arguments for every build, split on spaces (e.g. --no-cache)
set -euo pipefail
cd "$(dirname "$0")/.."

engine="${CONTAINER_ENGINE:-podman}"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(serve train proxy)

pip_setting() {  # this host's pip setting NAME: from the environment, else from pip's files
  local list value
  list="$("${PYTHON:-python3}" -m pip config list 2> /dev/null || true)"
  value="$(sed -n "s/^:env:\.$1='\(.*\)'\$/\1/p" <<< "$list" | head -n 1)"
  [[ -n $value ]] || value="$(sed -n "s/^global\.$1='\(.*\)'\$/\1/p" <<< "$list" | head -n 1)"
  echo "$value"
}

args=(--build-arg "BASE_IMAGE=${VAE_BASE_IMAGE:-python:3.11-slim}")
[[ -z ${VAE_PIP_INDEX_URL:-} ]] || args+=(--build-arg "PIP_INDEX_URL=$VAE_PIP_INDEX_URL")
[[ $engine != podman ]] || args+=(--format docker)  # OCI images would drop the HEALTHCHECK

ca="${VAE_CA_BUNDLE-$(pip_setting cert)}"
if [[ -n $ca ]]; then
  [[ -f $ca ]] || { echo "container_build: CA bundle $ca is not a file" >&2; exit 1; }
  args+=(--secret "id=ca,src=$ca")
fi

links="${VAE_PIP_FIND_LINKS-$(pip_setting find-links)}"
links="${links%% *}"  # the first, if pip has several
torch_index="${VAE_TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
if [[ -n $links && -d $links && $engine == podman ]]; then
  args+=(--volume "$links:$links:ro" --build-arg "PIP_FIND_LINKS=$links")
  if [[ -z ${VAE_TORCH_INDEX_URL+set} ]] && compgen -G "$links/torch-*+cpu-*.whl" > /dev/null; then
    torch_index=""  # the CPU wheel is right here: no need for the PyTorch index
  fi
fi
args+=(--build-arg "TORCH_INDEX_URL=$torch_index")
# shellcheck disable=SC2206  # a list of arguments on purpose
args+=(${VAE_BUILD_ARGS:-})

for target in "${targets[@]}"; do
  start=$SECONDS
  echo "container_build: $engine build --target $target -t localhost/vae-$target:latest ${args[*]} ."
  "$engine" build --target "$target" --tag "localhost/vae-$target:latest" "${args[@]}" .
  echo "container_build: built localhost/vae-$target:latest in $((SECONDS - start)) s"
done
