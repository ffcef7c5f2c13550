#!/usr/bin/env bash
# Build helm v3 from its Go module with the machine's Go, cache it, print its path.
#
#   tools/helm.sh            -> builds once, then prints e.g. ~/.cache/llm-worker/helm-v3.22.0/helm
#   HELM_VERSION=v3.18.6 tools/helm.sh
#
# No prebuilt binary is downloaded: the source comes from the Go module proxy
# (helm.sh/helm/v3) and is compiled here. The first build takes a few minutes on 2 cores;
# later calls return the cached binary at once. Progress goes to stderr, the path to stdout.
# A missing Go is an error (exit 1), never a silent skip.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/llm-worker"
DEST_DIR="$CACHE_ROOT/helm-$HELM_VERSION"
HELM="$DEST_DIR/helm"

log() { printf 'tools/helm.sh: %s\n' "$*" >&2; }

if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
    printf '%s\n' "$HELM"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    log "go is not on PATH: install Go 1.24+ to build helm $HELM_VERSION"
    exit 1
fi

export GOTOOLCHAIN=local     # never download another toolchain
export GOFLAGS=-mod=mod
export CGO_ENABLED=0
# Keep the build polite on small shared machines unless the caller says otherwise.
export GOMAXPROCS="${GOMAXPROCS:-2}"

mkdir -p "$DEST_DIR"
WORK="$(mktemp -d "$CACHE_ROOT/helm-build.XXXXXX")"
trap 'chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT

log "building helm $HELM_VERSION with $(go version | cut -d' ' -f3) (first time only; takes minutes)"
start=$(date +%s)

# Fetch the module source (verified against the checksum database as usual), then build it
# inside its own module so its go.mod (replace directives, exact versions) is honoured.
SRC="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir":[[:space:]]*"\(.*\)",*$/\1/p')"
if [[ -z "$SRC" || ! -d "$SRC" ]]; then
    log "could not download helm.sh/helm/v3@$HELM_VERSION from the Go module proxy"
    exit 1
fi
cp -R "$SRC" "$WORK/src"
chmod -R u+w "$WORK/src"

(
    cd "$WORK/src"
    go build -p "${GOMAXPROCS}" -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        -o "$WORK/helm" ./cmd/helm
)

"$WORK/helm" version --short >/dev/null
mv -f "$WORK/helm" "$HELM"
log "built $("$HELM" version --short) in $(( $(date +%s) - start ))s -> $HELM"
printf '%s\n' "$HELM"
