#!/bin/sh
# Entrypoint of the train image: `vae train` into $VAE_MODEL_DIR, once.
#
#   VAE_MODEL_DIR    where the model directory goes (the image sets /models/digits)
#   VAE_TRAIN_DATA   `digits` (the default, built into scikit-learn), or a .npy/.npz/.csv file or an
#                    image folder; a relative name is looked up in /data, the mounted ./data
#   VAE_TRAIN_ARGS   more `vae train` flags, split on spaces, e.g. "--epochs 50 --latent-dim 4"
#   VAE_RETRAIN=1    train even when $VAE_MODEL_DIR already holds a model (it is replaced atomically)
#
# Arguments given to the container go to `vae train` after those.
set -eu

out="${VAE_MODEL_DIR:?VAE_MODEL_DIR is not set}"
data="${VAE_TRAIN_DATA:-digits}"
case "$data" in
  digits | /*) ;;
  *) data="/data/$data" ;;
esac

if [ -f "$out/manifest.json" ] && [ "${VAE_RETRAIN:-0}" != 1 ]; then
  echo "vae-train: $out already holds a model; keeping it (VAE_RETRAIN=1 trains it again)" >&2
  exit 0
fi

echo "vae-train: training on $data into $out" >&2
# shellcheck disable=SC2086  # VAE_TRAIN_ARGS is a list of flags: split it on purpose
exec vae train --data "$data" --out "$out" --no-progress ${VAE_TRAIN_ARGS:-} "$@"
