#!/bin/sh
# Get Fashion-MNIST into the cache: the tool tries its cache, Debian's dataset folder and the web
# mirrors. Where none serves (a machine with no internet) and apt-get can be used as root, install
# Debian's dataset-fashion-mnist package and try again.
set -u
FMNIST_MLP=${FMNIST_MLP:-fmnist-mlp}

if "$FMNIST_MLP" download; then
    exit 0
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    echo "get-data: installing Debian's dataset-fashion-mnist package" >&2
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        && exec "$FMNIST_MLP" download
fi
echo "get-data: could not get Fashion-MNIST (see the message above)" >&2
exit 1
