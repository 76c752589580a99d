# Shared settings for Strata's scripts. Source it: `. scripts/env.sh`.
#
# One target directory is reused across runs and checkouts, so a second build
# only compiles what changed. Not across git worktrees built at the same
# time: cargo names a workspace crate's artifacts by its path relative to the
# workspace root, so two worktrees overwrite each other's and a build can
# silently use the other worktree's code. Give each worktree its own
# CARGO_TARGET_DIR (a copy of this one starts warm).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strata-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The virtualenv holding the Python clients the tests drive.
export STRATA_VENV="${STRATA_VENV:-$HOME/.cache/strata-venv}"
