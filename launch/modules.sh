# shellcheck shell=bash
# How the site files load their modules: with nounset off, then checked.
#
# Lmod's `module` and conda's `activate` are shell functions that run in the job script's own shell, and the
# scripts they run (conda's activate.d, a module's set-up) read variables that may be unset (conda/conda#3200,
# #9966). Under the job script's `set -u` that ends the job at once with "unbound variable" - `|| true` cannot
# catch it. So the loads run with nounset and errexit off, and their exit status is checked instead.
# With HPC_MNIST_DRY_RUN set (`python -m hpc_mnist.launch --dry-run`) nothing is loaded: the commands are
# printed to file descriptor 3 for the preview. SITE_MODULES=0 loads nothing and says so in one line: for a
# site file tried away from its site (the test lab), or an environment already set up by hand.

# load_site_modules FUNCTION SITE_FILE: run FUNCTION (a site file's module commands, each ending in `|| return`)
# as above. Returns non-zero, after one line naming the site file, when a load fails.
load_site_modules() {
    local commands=$1 site_file=$2 nounset="" status=0
    if [ -n "${HPC_MNIST_DRY_RUN:-}" ]; then
        (
            # shellcheck disable=SC2329  # called by "$commands"
            module() { echo "module $*" >&3; }
            # shellcheck disable=SC2329
            conda() { echo "conda $*" >&3; }
            "$commands"
        ) || true
        return 0
    fi
    if [ "${SITE_MODULES:-1}" = 0 ]; then
        echo "hpc_mnist: SITE_MODULES=0: $site_file loads no modules" >&2
        return 0
    fi
    if ! command -v module >/dev/null 2>&1; then
        echo "hpc_mnist: no 'module' command in this shell: $site_file loads no modules" >&2
        return 0
    fi
    case $- in *u*) nounset=1; set +u ;; esac
    "$commands" || status=$?
    if [ -n "$nounset" ]; then set -u; fi
    if [ "$status" -ne 0 ]; then
        echo "hpc_mnist: loading the site modules failed (exit $status; see the lines above): check the module" \
             "names and versions in $site_file with 'module avail'" >&2
        return 1
    fi
}

# activate_venv: the Python environment HPC_MNIST_VENV names, if any (after the modules it was built with).
activate_venv() {
    # shellcheck source=/dev/null
    if [ -n "${HPC_MNIST_VENV:-}" ]; then source "$HPC_MNIST_VENV/bin/activate"; fi
}

# generic_site FUNCTION SITE_FILE: a generic cluster's site file: its modules where the shell has a `module`
# command (a cluster without one needs no line about it), then the venv.
generic_site() {
    if command -v module >/dev/null 2>&1; then load_site_modules "$1" "$2" || return; fi
    activate_venv
}
