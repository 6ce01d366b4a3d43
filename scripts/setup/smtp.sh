# Sourced by scripts/test: guarantees a real SMTP server implementation for
# the delivery tests (tests/deliver_email.rs). Each test starts its own
# aiosmtpd instance on a free port with tests/common/smtp_sink.py, so
# nothing is started here and there is nothing to stop. Debian's python
# (/usr/bin/python3) is the one that sees python3-aiosmtpd, whatever else
# is first on PATH.
need_pkgs python3 python3-aiosmtpd
export LABGRADER_TEST_PYTHON=/usr/bin/python3
"$LABGRADER_TEST_PYTHON" -c 'import aiosmtpd' \
    || { echo "scripts/setup/smtp.sh: python3-aiosmtpd is installed but $LABGRADER_TEST_PYTHON cannot import it" >&2; return 1; }
