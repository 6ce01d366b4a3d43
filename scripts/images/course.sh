#!/usr/bin/env bash
# Build a realistic course image (default tag `labgrader/grader:latest`, the
# `[docker] image` default) without any registry: a Debian root filesystem
# made by `debootstrap --variant=minbase`, with python3, gcc and make, then
# `docker import`ed. This is the recipe course staff copy to make their own
# image: add the packages your tests need to EXTRA_PACKAGES (comma
# separated) and pick a tag.
#
#   scripts/images/course.sh [TAG]
#   EXTRA_PACKAGES=valgrind,python3-numpy scripts/images/course.sh course/os:2026
#
# Environment: SUITE (bookworm), MIRROR (the first Debian mirror of this
# host's apt sources, else deb.debian.org), FORCE=1 to rebuild an existing
# tag. Takes about a minute and a half; skipped when the tag exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

TAG=${1:-labgrader/grader:latest}
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
SUITE=${SUITE:-bookworm}
PACKAGES="python3,gcc,libc6-dev,make,ca-certificates${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG exists; FORCE=1 rebuilds it"
    exit 0
fi
need_pkgs debootstrap
if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(grep -hoE '(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
        awk '{print $2}' | head -1 || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

root=$(mktemp -d /tmp/lg-course-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "debootstrap $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2; echo "course.sh: debootstrap failed (log: $root.log)" >&2; exit 1; }
rm -f "$root.log"
# Slim down: apt caches and docs are not needed to run tests.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
mkdir -p "$root/workspace"
chmod 1777 "$root/tmp" "$root/var/tmp"

log "importing $TAG"
tar -C "$root" --numeric-owner -c . |
    "$DOCKER" import \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8' \
        --change 'WORKDIR /workspace' \
        --change 'CMD ["/bin/sh"]' \
        - "$TAG" >/dev/null
log "built $TAG"
