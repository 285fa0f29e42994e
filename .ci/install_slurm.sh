#!/usr/bin/env bash
# Install a minimal Slurm (controller + node daemon + clients) and munge for the local test cluster.
# Idempotent: returns in well under a second when everything is already installed.
# The daemons are started by slurm/local_cluster.sh, never by the package scripts.
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)

missing=()
for p in "${PKGS[@]}"; do
    # dpkg-query exits non-zero for unknown packages; "install ok installed" means fully configured.
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "slurm: already installed ($(slurmctld -V))"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then SUDO="sudo"; fi

# Without systemd the postinst scripts would try to start the daemons via invoke-rc.d; a policy-rc.d
# that exits 101 forbids that. Only add one if the machine has none, and remove only our own.
POLICY=/usr/sbin/policy-rc.d
ours=0
if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    ours=1
fi
cleanup() { if [[ $ours -eq 1 ]]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

start=$SECONDS
# apt-get update only when the package lists do not know the packages yet (fresh container).
if ! apt-cache show slurmctld >/dev/null 2>&1; then
    $SUDO apt-get update -qq
fi
# The slurm-wlm metapackage pulls ~43 packages; these four are all the local cluster needs.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "slurm: installed ${missing[*]} in $((SECONDS - start)) s ($(slurmctld -V))"
