# Sourced by scripts/test. What the service tests need: systemd-analyze
# (tests/systemd_units.rs, tests/install.rs; systemd need not be PID 1),
# systemd-nspawn (tests/systemd_boot.rs boots a throwaway container),
# passwd/util-linux for scripts/install, and the toolchains the example
# labs use (tests/examples.rs).
need_pkgs systemd systemd-container passwd util-linux coreutils bash python3 make gcc libc6-dev
