# A one-node Slurm cluster on this machine for the slurm runner's tests
# (sourced by scripts/test; also by scripts/slurm-dev-cluster for staff).
#
# Installs slurm-wlm, slurmrestd and munge (Debian 12: Slurm 22.05), then
# starts munged, slurmctld and slurmd (root, cgroup v1 task and process
# tracking) and slurmrestd (JWT, OpenAPI v0.0.38) on 127.0.0.1:6820 as the
# unprivileged user `labgrader`, who is also the user jobs run as (or
# $LG_SLURM_JOB_USER, e.g. root). Everything
# lives under $LG_SLURM_DIR (default /var/lib/labgrader-slurm): config,
# state, logs, the JWT key, the token file and the shared job directory; the
# machine's own /etc/slurm is not touched.
#
# Idempotent: daemons already running from this directory with the same
# config are reused (and then not stopped at exit); stale pid files are
# removed. Exports LABGRADER_TEST_SLURM=1, LABGRADER_SLURM_URL,
# LABGRADER_SLURM_TOKEN_FILE, LABGRADER_SLURM_SHARED_DIR, SLURM_CONF.
# Set LG_SLURM_KEEP=1 to leave what it starts running (dev cluster).

lg_slurm_main() {
    local dir="${LG_SLURM_DIR:-/var/lib/labgrader-slurm}"
    local user=labgrader
    # Jobs run as this user (the token's). `root` when the node's sandbox
    # needs privileges it cannot get inside a Slurm job otherwise.
    local job_user="${LG_SLURM_JOB_USER:-labgrader}"
    local port="${LG_SLURM_REST_PORT:-6820}"
    local host
    host="$(hostname -s)"

    need_pkgs slurm-wlm slurm-wlm-jwt-plugin slurmrestd munge curl || return 1

    # The unprivileged user slurmrestd runs as and jobs run as.
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd --system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$user"
    fi
    # The node's sandbox maps its jobs' ids from a subordinate range (as
    # root: labgrader's; as the job user: that user's), with newuidmap.
    ensure_subids "$user" || return 1
    [ "$job_user" = "$user" ] || [ "$job_user" = root ] || ensure_subids "$job_user" || return 1

    mkdir -p "$dir"/{etc,state,spool,log,run,shared}
    chmod 0755 "$dir" "$dir/etc" "$dir/shared"
    chmod 0700 "$dir/state"
    chown "$user:" "$dir/shared"

    # --- munge --------------------------------------------------------------
    if [ ! -s /etc/munge/munge.key ]; then
        log "slurm: creating a munge key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge: /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge: /run/munge /var/log/munge /var/lib/munge
        rm -f /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged --force
        on_exit_unless_kept "lg_slurm_kill munged /run/munge/munged.pid"
        local i
        for i in $(seq 50); do
            munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi

    # --- config -------------------------------------------------------------
    local cpus mem
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
    mem=$((mem - 512))
    local conf="$dir/etc/slurm.conf"
    local new="$conf.new"
    cat >"$new" <<EOF
# Written by labgrader's scripts/setup/slurm.sh: a one-node test cluster.
ClusterName=labgrader
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$dir/state/jwt_hs256.key
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
# Memory is a consumable resource; CPUs may be shared (OverSubscribe on the
# partition), so a 2-core machine still runs several grading jobs at once.
SelectTypeParameters=CR_CPU_Memory
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
KillWait=2
InactiveLimit=0
MinJobAge=300
OverTimeLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=grade Nodes=$host Default=YES MaxTime=INFINITE OverSubscribe=FORCE:16 State=UP
EOF
    cat >"$dir/etc/cgroup.conf.new" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedRAMSpace=100
AllowedSwapSpace=0
EOF
    local changed=0
    cmp -s "$new" "$conf" || changed=1
    cmp -s "$dir/etc/cgroup.conf.new" "$dir/etc/cgroup.conf" || changed=1
    mv "$new" "$conf"
    mv "$dir/etc/cgroup.conf.new" "$dir/etc/cgroup.conf"
    chmod 0644 "$conf" "$dir/etc/cgroup.conf"
    export SLURM_CONF="$conf"

    if [ ! -s "$dir/state/jwt_hs256.key" ]; then
        dd if=/dev/urandom of="$dir/state/jwt_hs256.key" bs=32 count=1 status=none
        chmod 0600 "$dir/state/jwt_hs256.key"
    fi

    # --- daemons ------------------------------------------------------------
    # Stale pid files go; daemons of this directory whose pid file was lost
    # are adopted (found by their exact command line).
    local d pid
    for d in slurmctld slurmd slurmrestd; do
        lg_slurm_pid_ok "$d" "$dir/run/$d.pid" && continue
        rm -f "$dir/run/$d.pid"
        case "$d" in
            slurmrestd) pid="$(pgrep -xf "slurmrestd -a rest_auth/jwt -s openapi/v0.0.38 127.0.0.1:$port" | head -1 || true)" ;;
            *) pid="$(pgrep -xf "$d -f $conf" | head -1 || true)" ;;
        esac
        if [ -n "$pid" ]; then echo "$pid" >"$dir/run/$d.pid"; fi
    done
    if [ "$changed" = 1 ]; then
        # A different config: restart whatever runs from this directory.
        lg_slurm_kill slurmrestd "$dir/run/slurmrestd.pid"
        lg_slurm_kill slurmd "$dir/run/slurmd.pid"
        lg_slurm_kill slurmctld "$dir/run/slurmctld.pid"
    fi

    if [ ! -e "$dir/run/slurmctld.pid" ]; then
        log "slurm: starting slurmctld"
        slurmctld -f "$conf" || { lg_slurm_tail "$dir/log/slurmctld.log"; return 1; }
        on_exit_unless_kept "lg_slurm_kill slurmctld '$dir/run/slurmctld.pid'"
    fi
    local i
    for i in $(seq 100); do
        scontrol ping 2>/dev/null | grep -q UP && break
        sleep 0.1
    done
    scontrol ping 2>/dev/null | grep -q UP || {
        log "slurm: slurmctld does not answer"
        lg_slurm_tail "$dir/log/slurmctld.log"
        return 1
    }

    if [ ! -e "$dir/run/slurmd.pid" ]; then
        log "slurm: starting slurmd"
        slurmd -f "$conf" || { lg_slurm_tail "$dir/log/slurmd.log"; return 1; }
        on_exit_unless_kept "lg_slurm_kill slurmd '$dir/run/slurmd.pid'"
    fi
    local state=""
    for i in $(seq 150); do
        state="$(sinfo -h -n "$host" -o %t 2>/dev/null | head -1)"
        case "$state" in
            idle | mix | alloc) break ;;
            drain* | down* | drng)
                scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.1
    done
    case "$state" in
        idle | mix | alloc) ;;
        *)
            log "slurm: node $host is '$state', not idle"
            lg_slurm_tail "$dir/log/slurmd.log"
            return 1
            ;;
    esac

    if [ ! -e "$dir/run/slurmrestd.pid" ]; then
        log "slurm: starting slurmrestd on 127.0.0.1:$port as $user"
        : >"$dir/log/slurmrestd.log"
        chown "$user:" "$dir/log/slurmrestd.log"
        # slurmrestd refuses root and SlurmUser; it has no pid file option.
        # setsid and setpriv exec, so $! is slurmrestd itself.
        setsid setpriv --reuid="$user" --regid="$user" --init-groups \
            env SLURM_CONF="$conf" SLURM_JWT=daemon \
            slurmrestd -a rest_auth/jwt -s openapi/v0.0.38 "127.0.0.1:$port" \
            </dev/null >>"$dir/log/slurmrestd.log" 2>&1 &
        echo $! >"$dir/run/slurmrestd.pid"
        on_exit_unless_kept "lg_slurm_kill slurmrestd '$dir/run/slurmrestd.pid'"
    fi

    # A token for the job user (slurmctld signs it with the JWT key).
    local token
    token="$(scontrol token username="$job_user" lifespan=604800 2>/dev/null | sed -n 's/^SLURM_JWT=//p')"
    [ -n "$token" ] || { log "slurm: scontrol token failed"; return 1; }
    local umask_old
    umask_old="$(umask)"
    umask 077
    printf '%s\n' "$token" >"$dir/token"
    umask "$umask_old"

    for i in $(seq 100); do
        curl -sf -o /dev/null -H "X-SLURM-USER-NAME: $job_user" -H "X-SLURM-USER-TOKEN: $token" \
            "http://127.0.0.1:$port/slurm/v0.0.38/ping" && break
        sleep 0.1
    done
    curl -sf -o /dev/null -H "X-SLURM-USER-NAME: $job_user" -H "X-SLURM-USER-TOKEN: $token" \
        "http://127.0.0.1:$port/slurm/v0.0.38/ping" || {
        log "slurm: slurmrestd does not answer on 127.0.0.1:$port"
        lg_slurm_tail "$dir/log/slurmrestd.log"
        return 1
    }

    export LABGRADER_TEST_SLURM=1
    export LABGRADER_SLURM_URL="http://127.0.0.1:$port"
    export LABGRADER_SLURM_TOKEN_FILE="$dir/token"
    export LABGRADER_SLURM_SHARED_DIR="$dir/shared"
    export LABGRADER_SLURM_USER="$job_user"
    log "slurm: cluster up (node $host, partition grade, REST $LABGRADER_SLURM_URL)"
}

# Register a stop unless the caller wants the cluster left running.
on_exit_unless_kept() {
    [ "${LG_SLURM_KEEP:-0}" = 1 ] || on_exit "$@"
}

# Is the pid in FILE alive and named NAME?
lg_slurm_pid_ok() {
    local name="$1" file="$2" pid
    [ -s "$file" ] || return 1
    pid="$(cat "$file")"
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]
}

# Stop the daemon whose pid is in FILE (only if it is really NAME).
lg_slurm_kill() {
    local name="$1" file="$2" pid i
    if lg_slurm_pid_ok "$name" "$file"; then
        pid="$(cat "$file")"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            [ -e "/proc/$pid" ] || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

lg_slurm_tail() {
    [ -e "$1" ] && tail -n 20 "$1" | sed 's/^/    /' >&2
    return 0
}

# LG_SLURM_FUNCS_ONLY=1: define the helpers only (scripts/slurm-dev-cluster stop).
[ "${LG_SLURM_FUNCS_ONLY:-0}" = 1 ] || lg_slurm_main
