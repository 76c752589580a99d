# Shared settings for Strata's scripts. Source it: `. scripts/env.sh`.
#
# One target directory is reused across runs and checkouts, so a second build
# only compiles what changed.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The virtualenv holding the Python clients the tests drive.
export STRATA_VENV="${STRATA_VENV:-$HOME/.cache/strata-venv}"
