#!/usr/bin/env bash
# Builds berth's container image from binaries that are already built, without any network.
#
#   deploy/build-image.sh [--binary-dir DIR] [--tag TAG]
#
#   --binary-dir DIR  where `berth` and `berth-runc` are (default: target/release of this
#                     repository; build them with `cargo build --release --locked -p berth`)
#   --tag TAG         the image's name (default: localhost/berth:<version of berth>)
#
# Why this exists next to deploy/Containerfile: that file compiles berth inside
# rust:1.95-bookworm and runs it on debian:bookworm-slim, so it needs Docker Hub, Debian mirrors
# and crates.io. Machines without registry access (CI included) cannot use it. This script
# instead packs the host's binaries and exactly the shared libraries they load into a
# `FROM scratch` image: nothing is pulled, nothing is downloaded, and the test suite
# (tests/tests/deploy_image.rs) builds and runs the result.
#
# The binaries run on the glibc they were linked against, copied from this host, so the image
# works wherever the host's build would; it is not a Debian image (no shell, no apt, no
# coreutils: `kubectl exec POD -- berth status` works, `kubectl exec POD -- sh` does not).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary_dir="$repo_root/target/release"
tag=""

usage() {
    sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while (($#)); do
    case "$1" in
        --binary-dir) binary_dir=${2:?--binary-dir needs a directory}; shift 2 ;;
        --binary-dir=*) binary_dir=${1#*=}; shift ;;
        --tag) tag=${2:?--tag needs an image name}; shift 2 ;;
        --tag=*) tag=${1#*=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-image.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

die() {
    echo "build-image.sh: $*" >&2
    exit 1
}

for tool in podman ldd; do
    command -v "$tool" >/dev/null || die "'$tool' not found (podman: \`cargo xtask setup\` installs it)"
done

[[ -d $binary_dir ]] || die "$binary_dir is not a directory"
# Absolute: the paths are used after changing into the temporary directory's context.
binary_dir=$(cd "$binary_dir" && pwd)
berth="$binary_dir/berth"
runc="$binary_dir/berth-runc"
for bin in "$berth" "$runc"; do
    [[ -x $bin ]] || die "$bin missing or not executable (cargo build --release --locked -p berth)"
done

# Running them proves they are binaries for this machine with their libraries present here,
# before anything is copied. `berth --version` prints "berth 0.1.0".
version_line=$("$berth" --version) || die "'$berth --version' failed"
read -r name version _ <<<"$version_line"
[[ $name == berth && $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] \
    || die "unexpected '$berth --version' output: '$version_line'"
runc_line=$("$runc" --version) || die "'$runc --version' failed"
# Both come from the same package; a mismatch means a stale binary in the directory.
[[ $runc_line == "berth-runc $version" ]] \
    || die "'$runc --version' says '$runc_line', expected 'berth-runc $version' (stale build?)"
tag=${tag:-localhost/berth:$version}

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/local/bin"

# Hard links cost no space (the debug binaries are hundreds of MB each) and podman only reads
# them; across file systems fall back to a copy.
for bin in "$berth" "$runc"; do
    ln "$bin" "$rootfs/usr/local/bin/" 2>/dev/null || cp "$bin" "$rootfs/usr/local/bin/"
done

# Every shared object the binaries load, at the path the host's loader found it, so the same
# search paths find it in the image (the dynamic loader itself at its absolute PT_INTERP path,
# e.g. /lib64/ld-linux-x86-64.so.2). `cp -L`: on merged-/usr hosts these paths go through
# symlinks (/lib64 -> usr/lib64, ld-linux -> its versioned file); the image gets the files.
# ldd output lines:
#   libseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x...)   library
#   /lib64/ld-linux-x86-64.so.2 (0x...)                                 loader
#   linux-vdso.so.1 (0x...)                                             in the kernel: skipped
#   libfoo.so.1 => not found                                            fatal
copy_libs() {
    local bin=$1 out line path
    # A static binary (musl) needs nothing; glibc's ldd then says "not a dynamic executable".
    if ! out=$(ldd "$bin" 2>&1); then
        [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]] \
            || die "ldd $bin failed: $out"
        return 0
    fi
    while IFS= read -r line; do
        [[ $line == *"not found"* ]] && die "$bin: library missing on this host: $line"
        if [[ $line =~ =\>\ (/[^ ]+) ]]; then
            path=${BASH_REMATCH[1]}
        elif [[ $line =~ ^[[:space:]]*(/[^ ]+) ]]; then
            path=${BASH_REMATCH[1]}
        else
            continue
        fi
        mkdir -p "$rootfs$(dirname "$path")"
        cp -L "$path" "$rootfs$path"
    done <<<"$out"
}
copy_libs "$berth"
copy_libs "$runc"

mkdir -p "$rootfs/etc"
# TLS roots, when the host has them: kube-rs (rustls) verifies the API server against the
# service-account CA and needs none, but `berth pull` and a kubeconfig naming a public endpoint
# may use the system roots.
if [[ -e /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
fi
# glibc resolves user and group names (uid 0 in logs, `getpwuid`) from these files.
printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
# Without nsswitch.conf glibc asks DNS before /etc/hosts; the kubelet-provided /etc/hosts
# should win, as in any Debian image.
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
# Mount points and writable places: runtimes create missing mount points, but not with
# readOnlyRootFilesystem, and /tmp must be world-writable with the sticky bit.
mkdir -p "$rootfs"/{proc,sys,dev,run,var/lib/berth,root}
mkdir -m 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"

# No RUN steps (no shell in scratch), so the build needs no runtime and no network.
# PATH: the DaemonSet's `command: ["berth", "agent"]` and `kubectl exec POD -- berth status`
# look `berth` up through it, and a scratch image has no PATH of its own.
cat >"$work/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="berth" \\
      org.opencontainers.image.description="eBPF container networking and security agent" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
ENTRYPOINT ["/usr/local/bin/berth"]
EOF

# --network=none and --pull=never: nothing may leave the machine (FROM scratch pulls nothing;
# this makes any regression fail instead of reaching for a registry). --layers=false: one
# commit at the end instead of an intermediate image per step left behind in the store.
podman build --network=none --pull=never --layers=false \
    -f "$work/Containerfile" -t "$tag" "$work"

size=$(podman image inspect --format '{{.Size}}' "$tag")
cat <<EOF

Built $tag (berth $version, $((size / 1024 / 1024)) MiB).

deploy/berth.yaml runs image berth:$version, which the kubelet reads as
docker.io/library/berth:$version. To load it into a node's containerd (see deploy/README.md):

  podman tag $tag docker.io/library/berth:$version
  podman save docker.io/library/berth:$version | ssh NODE sudo ctr -n k8s.io images import -
EOF
