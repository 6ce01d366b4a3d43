# Shared helpers for scripts/*. Source it; do not run it.

# Install Debian packages that are missing (idempotent, quiet when all present).
need_pkgs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts: missing packages: ${missing[*]}; run as root or install them" >&2
        return 1
    fi
    echo "scripts: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Commands run (in reverse order) when the calling script exits.
_LG_CLEANUP=()
on_exit() { _LG_CLEANUP+=("$*"); }
_lg_run_cleanup() {
    local i
    for ((i=${#_LG_CLEANUP[@]}-1; i>=0; i--)); do eval "${_LG_CLEANUP[$i]}" || true; done
}
trap _lg_run_cleanup EXIT

log() { echo "scripts: $*" >&2; }

# Give USER a subordinate id range of 65536 ids in /etc/subuid and
# /etc/subgid (the native runner's jobs run as ids from it, never as the
# daemon's own), unless it has one; and install newuidmap/newgidmap
# (package uidmap), which the runner uses when it is not root. The range
# starts at 100000 or past every range already given to anyone.
ensure_subids() {
    local user=$1 f start
    need_pkgs uidmap
    for f in /etc/subuid /etc/subgid; do
        [ -e "$f" ] || install -m 0644 /dev/null "$f"
        if awk -F: -v u="$user" '$1 == u && $3 >= 65536 { found = 1 } END { exit !found }' "$f"; then
            continue
        fi
        start=$(awk -F: 'BEGIN { s = 100000 } NF >= 3 && $2 + $3 > s { s = $2 + $3 } END { print s }' \
            /etc/subuid /etc/subgid)
        echo "$user:$start:65536" >> "$f"
        log "gave $user the subordinate ids $start-$((start + 65535)) in $f"
    done
}
