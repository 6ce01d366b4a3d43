# Where labgrader lives on a host, with which owners and modes, and how its
# user and secrets are made: the ONE definition that scripts/install (an
# install from a checkout) and the Debian package's maintainer scripts
# (which ship this file as /usr/lib/labgrader/layout.sh) both source.
#
# POSIX sh: dpkg runs maintainer scripts with /bin/sh (dash). Source it; do
# not run it. The caller defines say() for messages; functions set
# CHANGED=1 when they changed something, and never overwrite a secret.

LG_USER=labgrader
LG_STATE=/var/lib/labgrader          # spool, gradebook, mirrors (spool.dir)
LG_ETC=/etc/labgrader                # config
LG_CONFIG=$LG_ETC/labgrader.toml
LG_CONFIG_MODE=0640
LG_CONFIG_OWNER=root:$LG_USER
LG_CREDS=$LG_ETC/credentials         # secrets, loaded by the units with LoadCredential=
# The webhook token and the web view's secret and staff token are
# generated (32 random bytes, hex); the others stay empty (= unused) until
# staff fill them.
LG_SECRET_GENERATED="webhook-token web-secret web-staff-token"
LG_SECRETS_EMPTY="gitlab-token callback-secret smtp-password slurm-token"

# The directories: PATH MODE OWNER GROUP, one a line.
lg_dirs() {
    echo "$LG_STATE 0750 $LG_USER $LG_USER"
    echo "$LG_ETC 0750 root $LG_USER"
    echo "$LG_CREDS 0700 root root"
}

# lg_statoverride PATH — true when the admin set PATH's owner and mode with
# dpkg-statoverride(1); then they are left as the admin set them.
lg_statoverride() {
    command -v dpkg-statoverride >/dev/null 2>&1 &&
        dpkg-statoverride --list "$1" >/dev/null 2>&1
}

# The system user and group (home = the spool, no login shell). adduser is
# Debian's way (the package depends on it); useradd where it is missing.
# Returns 0 when it created the user, 1 when the user existed.
lg_ensure_user() {
    getent passwd "$LG_USER" >/dev/null && return 1
    if command -v adduser >/dev/null 2>&1; then
        adduser --system --group --quiet --home "$LG_STATE" --no-create-home \
            --shell /usr/sbin/nologin --gecos "labgrader grader" "$LG_USER"
    else
        useradd --system --user-group --home-dir "$LG_STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "labgrader grader" "$LG_USER"
    fi
    say "created system user $LG_USER"
    CHANGED=1
    return 0
}

# The grader's docker runner talks to /run/docker.sock: join the docker
# group when it exists. Returns 0 when it added the user.
lg_join_docker() {
    getent group docker >/dev/null || return 1
    id -nG "$LG_USER" | tr ' ' '\n' | grep -qx docker && return 1
    usermod -a -G docker "$LG_USER"
    say "added $LG_USER to the docker group"
    CHANGED=1
    return 0
}

# Create the directories of lg_dirs, and give existing ones their owner and
# mode (unless dpkg-statoverride says otherwise).
lg_make_dirs() {
    lg_dirs | while read -r path mode owner group; do
        if lg_statoverride "$path"; then
            [ -d "$path" ] || install -d "$path"
        else
            install -d -m "$mode" -o "$owner" -g "$group" "$path"
        fi
    done
}

# The config's owner and mode (the file itself is the package's conffile,
# or scripts/install's copy of the example).
lg_fix_config() {
    [ -e "$LG_CONFIG" ] || return 0
    lg_statoverride "$LG_CONFIG" && return 0
    chmod "$LG_CONFIG_MODE" "$LG_CONFIG"
    chown "$LG_CONFIG_OWNER" "$LG_CONFIG"
}

# lg_create_secret PATH GENERATE(0|1) — create PATH when missing (random
# hex when GENERATE is 1, else empty); an existing secret is never
# rewritten, only made root's alone again.
lg_create_secret() {
    _lg_path=$1
    if [ ! -e "$_lg_path" ]; then
        _lg_tmp=$(mktemp "$_lg_path.XXXXXX")
        chmod 0600 "$_lg_tmp"
        if [ "$2" = 1 ]; then
            head -c 32 /dev/urandom | od -An -vtx1 | tr -d ' \n' >"$_lg_tmp"
            echo >>"$_lg_tmp"
        fi
        mv "$_lg_tmp" "$_lg_path"
        say "created $_lg_path"
        CHANGED=1
    fi
    chmod 0600 "$_lg_path"
    chown root:root "$_lg_path"
}

# lg_migrate_secret NAME — a secret an older install kept beside the config,
# readable by the daemon's user, moves into the credentials (content kept).
lg_migrate_secret() {
    _lg_old="$LG_ETC/$1" _lg_new="$LG_CREDS/$1"
    if [ -f "$_lg_old" ] && [ ! -e "$_lg_new" ]; then
        install -m 0600 -o root -g root "$_lg_old" "$_lg_new"
        rm -f "$_lg_old"
        say "moved $_lg_old to $_lg_new (loaded by the units with LoadCredential=)"
        CHANGED=1
    elif [ -f "$_lg_old" ]; then
        rm -f "$_lg_old"
        say "removed $_lg_old ($_lg_new is the secret in use)"
        CHANGED=1
    fi
}

# Every secret the units load: migrated, generated or created empty.
lg_make_secrets() {
    for _lg_name in webhook-token gitlab-token; do lg_migrate_secret "$_lg_name"; done
    for _lg_name in $LG_SECRET_GENERATED; do
        lg_create_secret "$LG_CREDS/$_lg_name" 1
    done
    for _lg_name in $LG_SECRETS_EMPTY; do
        lg_create_secret "$LG_CREDS/$_lg_name" 0
    done
}

# lg_check_config BIN — load the config as the daemon's user, with the
# secrets handed over as the units do (a private copy in
# $CREDENTIALS_DIRECTORY): a config the daemon cannot load is caught at
# install time. On failure prints why (stderr) and returns 1.
lg_check_config() {
    _lg_check=$(mktemp -d /run/labgrader-check.XXXXXX 2>/dev/null || mktemp -d)
    cp -a "$LG_CREDS"/. "$_lg_check"/
    chown -R "$LG_USER:$LG_USER" "$_lg_check"
    chmod 0500 "$_lg_check"
    if ! _lg_out=$(runuser -u "$LG_USER" -- env CREDENTIALS_DIRECTORY="$_lg_check" \
            "$1" check-config --config "$LG_CONFIG" 2>&1 >/dev/null); then
        rm -rf "$_lg_check"
        echo "$LG_CONFIG does not load as user $LG_USER:" >&2
        echo "$_lg_out" >&2
        return 1
    fi
    rm -rf "$_lg_check"
    return 0
}
