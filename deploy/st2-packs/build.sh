#!/usr/bin/env bash
# Builds the StackStorm worker image with the shared packs (deploy/st2-packs/Dockerfile) and
# tags it with the git sha of the packs, so that every cluster can be pinned to one release.
#
#   deploy/st2-packs/build.sh [--push]
#
# Environment: ST2_PACKS_IMAGE (default registry.example.com/st2-worker), ST2_VERSION (the
# official st2actionrunner tag to build on, default 3.9.0).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE=${ST2_PACKS_IMAGE:-registry.example.com/st2-worker}
ST2_VERSION=${ST2_VERSION:-3.9.0}
SHA=$(git -C "$HERE" rev-parse --short=12 HEAD)
if [ -n "$(git -C "$HERE" status --porcelain -- .)" ]; then
  SHA="$SHA-dirty"   # never push a tag that does not match a commit
fi
TAG="$IMAGE:st2-$ST2_VERSION-packs-$SHA"

docker build --build-arg "ST2_VERSION=$ST2_VERSION" -t "$TAG" "$HERE"
echo "built $TAG"
if [ "${1:-}" = "--push" ]; then
  case "$SHA" in *-dirty) echo "refusing to push a dirty tree: commit the packs first" >&2; exit 1 ;; esac
  docker push "$TAG"
  echo "pushed $TAG"
fi
