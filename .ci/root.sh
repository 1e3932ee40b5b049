# Sourced by the .ci scripts: they need root (namespaces, tgtd, apt-get, the VM rig). A user who is not root
# runs them through sudo (re-executed here, with the environment kept); root runs them as they are.
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E bash "$0" "$@"
    fi
    echo "$0: needs root (network namespaces, tgtd, apt-get) and sudo is not installed: run it as root" >&2
    exit 2
fi
