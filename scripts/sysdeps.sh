#!/usr/bin/env bash
# Installs the Debian packages mpproxy needs when they are missing. Needs root for apt-get;
# without root it only says what is missing.
set -euo pipefail
need=()
command -v ip      >/dev/null 2>&1 || need+=(iproute2)
command -v nft     >/dev/null 2>&1 || need+=(nftables)
command -v iperf3  >/dev/null 2>&1 || need+=(iperf3)
command -v curl    >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the status page's browser test
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "sysdeps: missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
echo "sysdeps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
