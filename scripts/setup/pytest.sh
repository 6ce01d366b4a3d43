# Sourced by scripts/test: Debian's pytest, whose real `--junitxml` reports
# the results tests read (tests/results_junit.rs). Nothing to start.
need_pkgs python3 python3-pytest
export LABGRADER_TEST_PYTHON=${LABGRADER_TEST_PYTHON:-/usr/bin/python3}
