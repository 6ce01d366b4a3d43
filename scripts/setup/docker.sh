# Sourced by scripts/test. The Docker engine and the test images for the
# docker runner's tests (tests/runner_docker*.rs):
#   - Debian's docker.io (the client /usr/bin/docker and dockerd; a
#     /usr/local/bin/docker may be a client only);
#   - dockerd started in the background when no engine answers (log in
#     target/dockerd.log), stopped on exit only if we started it; our
#     engine has no bridge network (jobs run with network none anyway);
#   - the images, built locally (no registry is reachable) and cached:
#     labgrader/test-busybox:latest (scripts/images/busybox.sh, ~1 s) and
#     the course image labgrader/grader:latest (scripts/images/course.sh,
#     debootstrap, a few minutes the first time).
# Exports LABGRADER_TEST_DOCKER=1. LABGRADER_SKIP_DOCKER=1 skips all this
# (and the docker tests then skip themselves).

if [ "${LABGRADER_SKIP_DOCKER:-}" = 1 ]; then
    log "docker: LABGRADER_SKIP_DOCKER=1, not setting up Docker"
else
    need_pkgs docker.io busybox-static debootstrap
    _lg_docker=/usr/bin/docker
    [ -x "$_lg_docker" ] || _lg_docker=$(command -v docker)
    export DOCKER="$_lg_docker"

    if ! "$DOCKER" info >/dev/null 2>&1; then
        mkdir -p target
        _lg_dockerd_log=$PWD/target/dockerd.log
        log "docker: starting dockerd (log: $_lg_dockerd_log)"
        /usr/sbin/dockerd --bridge=none --iptables=false --ip-masq=false >"$_lg_dockerd_log" 2>&1 &
        _lg_dockerd_pid=$!
        on_exit "_lg_stop_dockerd $_lg_dockerd_pid"
        _lg_stop_dockerd() {
            kill -TERM "$1" 2>/dev/null || return 0
            local i
            for i in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
            kill -KILL "$1" 2>/dev/null || true
        }
        for _lg_i in $(seq 120); do
            "$DOCKER" info >/dev/null 2>&1 && break
            kill -0 "$_lg_dockerd_pid" 2>/dev/null || {
                tail -20 "$_lg_dockerd_log" >&2
                echo "scripts/setup/docker.sh: dockerd exited; see $_lg_dockerd_log" >&2
                exit 1
            }
            sleep 0.5
        done
        "$DOCKER" info >/dev/null 2>&1 || {
            echo "scripts/setup/docker.sh: dockerd did not answer within 60 s; see $_lg_dockerd_log" >&2
            exit 1
        }
    fi
    log "docker: engine $("$DOCKER" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
    scripts/images/busybox.sh
    scripts/images/course.sh
    export LABGRADER_TEST_DOCKER=1
fi
