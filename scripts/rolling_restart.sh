#!/usr/bin/env bash
# Restart the replicas of a compose service one at a time, each time waiting until the restarted
# replica is healthy before touching the next: behind the proxy, no request fails. This is how a
# new model (written into the volume by the train service) goes live without downtime.
#
#   scripts/rolling_restart.sh [-p PROJECT] [SERVICE]     SERVICE defaults to serve
#
# PROJECT defaults to $COMPOSE_PROJECT_NAME, else the name of this checkout's folder (what both
# `docker compose` and podman-compose use). CONTAINER_ENGINE is podman (default) or docker.
# VAE_RESTART_WAIT_S bounds the wait for each replica (default 300). VAE_RESTART_SETTLE_S (default 10)
# is how long a replica, once healthy, is left before the next one stops: more than the 5 s for which
# the proxy caches the addresses of the replicas, so that it knows the new address before it needs it.
set -euo pipefail

engine="${CONTAINER_ENGINE:-podman}"
project="${COMPOSE_PROJECT_NAME:-$(basename "$(cd "$(dirname "$0")/.." && pwd)")}"
if [[ ${1:-} == -p ]]; then
  project="$2"
  shift 2
fi
service="${1:-serve}"
wait_s="${VAE_RESTART_WAIT_S:-300}"
settle_s="${VAE_RESTART_SETTLE_S:-10}"

mapfile -t containers < <("$engine" ps --quiet \
  --filter "label=com.docker.compose.project=$project" \
  --filter "label=com.docker.compose.service=$service")
if [[ ${#containers[@]} -eq 0 ]]; then
  echo "rolling_restart: no running container of service $service in project $project" >&2
  exit 1
fi
if [[ ${#containers[@]} -eq 1 ]]; then
  echo "rolling_restart: only one replica of $service: requests fail while it restarts (scale it to 2 or more)" >&2
fi

healthy() {
  if [[ $engine == podman ]]; then
    # Podman runs healthchecks from systemd timers; without systemd, run the check here.
    podman healthcheck run "$1" > /dev/null 2>&1
  else
    [[ "$(docker inspect --format '{{.State.Health.Status}}' "$1")" == healthy ]]
  fi
}

for i in "${!containers[@]}"; do
  id="${containers[$i]}"
  if [[ $i -gt 0 ]]; then sleep "$settle_s"; fi
  name="$("$engine" inspect --format '{{.Name}}' "$id")"
  echo "rolling_restart: restarting ${name#/}"
  if [[ $engine == podman ]]; then
    # podman-compose ties each replica to the (exited) train container with --requires, and
    # `podman restart` refuses that; `start` runs train again first, which keeps the model it finds.
    podman stop -t 30 "$id" > /dev/null
    podman start "$id" > /dev/null
  else
    docker restart -t 30 "$id" > /dev/null
  fi
  deadline=$((SECONDS + wait_s))
  until healthy "$id"; do
    if [[ $SECONDS -ge $deadline ]]; then
      echo "rolling_restart: ${name#/} is not healthy after $wait_s s; stopping here" >&2
      exit 1
    fi
    sleep 1
  done
  echo "rolling_restart: ${name#/} is healthy"
done
