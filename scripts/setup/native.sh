# Sourced by scripts/test: what the native runner's tests (tests/runner_native.rs)
# need. gcc + libc6-dev build the static hostile helpers; procps gives pgrep;
# util-linux gives setpriv and unshare. The tests run jobs in user namespaces:
# check here, so a host that forbids them fails with the reason up front.
need_pkgs gcc libc6-dev procps util-linux
if [ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 0)" = 0 ]; then
    log "setup/native: user namespaces are disabled (user.max_user_namespaces = 0); the native runner tests will fail"
fi
# Jobs run as ids of a subordinate range (never the daemon's): the tests
# run the runner as root (range of user `labgrader`) and as `labgrader`
# itself (through newuidmap), so that user needs a range and the helpers.
id labgrader >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin labgrader
ensure_subids labgrader
