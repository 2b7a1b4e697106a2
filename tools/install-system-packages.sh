#!/usr/bin/env bash
# Install the Debian packages the pipeline needs, only those that are missing.
#   tools/install-system-packages.sh redis-server [postgresql] [chromium] [slurm-wlm] [munge]
# Runs apt-get (as root, or through sudo) once, and only when something is missing.
set -euo pipefail

have() {
    case "$1" in
        redis-server) command -v redis-server >/dev/null 2>&1 ;;
        postgresql) compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ;;
        chromium) [ -x /usr/bin/chromium ] ;;
        slurm-wlm) command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 ;;
        munge) command -v munged >/dev/null 2>&1 ;;
        *) dpkg -s "$1" >/dev/null 2>&1 ;;
    esac
}

missing=()
for package in "$@"; do
    have "$package" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    apt=(apt-get)
elif command -v sudo >/dev/null 2>&1; then
    apt=(sudo apt-get)
else
    echo "error: missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
"${apt[@]}" update -qq
DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
