# Sourced by scripts/test: guarantees Debian's headless Chromium for the
# browser test of the web view (tests/web_browser.rs), which renders the
# result page and a staff page to PNG and reads the DOM Chromium dumps.
# Nothing is started here: each test runs `chromium --headless` itself.
# fonts-dejavu-core gives the screenshots readable glyphs on a bare host.
need_pkgs chromium fonts-dejavu-core
export LABGRADER_TEST_CHROMIUM=/usr/bin/chromium
