#!/usr/bin/env bash
# Installs a Debian package when its command is missing: apt-install.sh COMMAND PACKAGE.
# Uses sudo when not root. Exits 0 if the command is there afterwards, 1 (saying so) if not;
# the caller decides whether that fails its run or skips it.
set -uo pipefail
command="$1" package="$2"
command -v "$command" >/dev/null && exit 0
echo "apt-install.sh: installing $package from Debian packages" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1
if ! command -v "$command" >/dev/null; then
    echo "apt-install.sh: $command is missing and apt-get could not install $package" >&2
    exit 1
fi
