# Sourced by scripts/test. What the package test (tests/package.rs) needs:
# dpkg-dev (dpkg-shlibdeps for cargo-deb's Depends), lintian, binutils
# (objdump, the glibc floor). scripts/package installs cargo-deb itself;
# the Docker part uses the engine and image of setup/docker.sh.
need_pkgs dpkg-dev lintian binutils
