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
