#!/usr/bin/env bash
# Builds the Kubernetes 1.20.2 binaries berth's tests and benchmarks run against
# (kube-apiserver, kube-controller-manager, kube-proxy, kubectl) from Debian bookworm's
# `kubernetes` source package with Debian's Go 1.19 (see shared/KUBERNETES.md for why: no
# registry here ships these binaries). They are cached in CACHE_DIR (the caller keys it by
# version), so a warm machine skips the build; a fresh machine takes about 10 minutes.
#
# Usage: build-kubernetes.sh CACHE_DIR
set -euo pipefail
cache=${1:?usage: build-kubernetes.sh CACHE_DIR}
binaries=(kube-apiserver kube-controller-manager kube-proxy kubectl)
missing=()
for b in "${binaries[@]}"; do
    [[ -x $cache/$b ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
echo "building kubernetes 1.20.2: ${missing[*]} (about 10 minutes on a fresh machine)"
export DEBIAN_FRONTEND=noninteractive
# Source packages from the machine's own Debian sources (deb822 format).
if [[ ! -e /etc/apt/sources.list.d/berth-src.sources ]]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        >/etc/apt/sources.list.d/berth-src.sources
    apt-get update -q
fi
work=$(mktemp -d /var/tmp/berth-k8s-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only kubernetes >/dev/null
tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz
cd kubernetes-1.20.2
# The vendored reflect2 1.0.1 crashes under Go >= 1.18 (SIGSEGV in mapiternext: the API server
# dies on its first EndpointSlice); Debian's reflect2 1.0.2 does not.
rm -rf vendor/github.com/modern-go/reflect2
mkdir vendor/github.com/modern-go/reflect2
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
   /usr/share/gocode/src/github.com/modern-go/reflect2/*.s vendor/github.com/modern-go/reflect2/
rm -f vendor/github.com/modern-go/reflect2/*_test.go
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
unset GO111MODULE GOFLAGS
what=()
for b in "${missing[@]}"; do what+=("cmd/$b"); done
PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$PWD/.go GOCACHE=$work/gocache CGO_ENABLED=0 \
    make WHAT="${what[*]}"
mkdir -p "$cache"
for b in "${missing[@]}"; do
    cp "_output/bin/$b" "$cache/$b.tmp"
    mv "$cache/$b.tmp" "$cache/$b"
done
echo "kubernetes 1.20.2 binaries cached in $cache: ${missing[*]}"
