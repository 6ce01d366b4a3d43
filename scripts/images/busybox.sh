#!/usr/bin/env bash
# Build the tiny test image `labgrader/test-busybox:latest` (or the tag given
# as $1) from Debian's busybox-static, without any registry: a root
# filesystem made here and `docker import`ed. It has /bin/sh and the busybox
# applets, a writable-layer /tmp and /workspace mount point, and an
# /etc/passwd with root and nobody (65534). The hostile-submission tests run
# in it; it is also the smallest image a course could grade shell tests in.
#
#   scripts/images/busybox.sh [TAG]      # FORCE=1 rebuilds an existing tag
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

TAG=${1:-labgrader/test-busybox:latest}
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG exists; FORCE=1 rebuilds it"
    exit 0
fi
need_pkgs busybox-static
BUSYBOX=/bin/busybox
file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' || [ ! -x /usr/bin/file ] || {
    echo "busybox.sh: $BUSYBOX is not statically linked; install busybox-static" >&2; exit 1; }

root=$(mktemp -d /tmp/lg-busybox-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,tmp,var/tmp,root,workspace,dev,proc,sys}
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"

log "importing $TAG"
tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
    "$DOCKER" import \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        --change 'WORKDIR /workspace' \
        --change 'CMD ["/bin/sh"]' \
        - "$TAG" >/dev/null
log "built $TAG"
