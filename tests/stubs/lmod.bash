# shellcheck shell=bash
# Test stand-in for Lmod's `module` and conda's `conda` shell functions, read through BASH_ENV so that every
# bash a job script starts has them, as a login shell on a cluster does. Like the real ones they run in the
# caller's shell, and what they run reads a variable that is not set, as conda's activate.d scripts do
# (conda/conda#3200, #9966): under `set -u` that ends the caller's shell, and `|| true` cannot catch it.
# STUB_LOG records every call; STUB_FRAMEWORKS_VERSION picks the Aurora frameworks module's version;
# STUB_MISSING_MODULE names a module that "does not exist" (load fails with Lmod's message).

_stub_activate() {
    unset _STUB_NEVER_SET
    _stub_backup=$_STUB_NEVER_SET   # an activate.d script saving a variable it assumes is set
    export CONDA_PREFIX=/stub/conda CONDA_DEFAULT_ENV=base
}

module() {
    echo "module $*" >> "${STUB_LOG:-/dev/null}"
    local name
    [ "${1:-}" = load ] || return 0
    shift
    for name in "$@"; do
        if [ "$name" = "${STUB_MISSING_MODULE:-}" ]; then
            echo "Lmod has detected the following error: The following module(s) are unknown: \"$name\"" >&2
            return 1
        fi
        case "$name" in
            conda)
                # shellcheck disable=SC2329  # called by the site files
                conda() { echo "conda $*" >> "${STUB_LOG:-/dev/null}"; [ "$1" != activate ] || _stub_activate; } ;;
            frameworks) name=frameworks/${STUB_FRAMEWORKS_VERSION:-2025.3.1}; _stub_activate ;;
            pytorch) name=pytorch/2.6.0; _stub_activate ;;
        esac
        export LOADEDMODULES=${LOADEDMODULES:+$LOADEDMODULES:}$name
    done
}
