#!/usr/bin/env bash
# Install the system packages kioskfleet's demo and tests need, if missing.
# Debian/Ubuntu only; uses sudo when not root.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)  # the 3-node broker cluster test
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the off-the-shelf EST client test
command -v curl >/dev/null 2>&1 || need+=(curl)        # (openssl req + curl simpleenroll)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the console's browser tests
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)  # zh_CN pages
# the weekly hall report's PDF (WeasyPrint: Pango) and its tests (pdftoppm, pdftotext)
ldconfig -p 2>/dev/null | grep -q 'libpango-1.0.so.0' || need+=(libpango-1.0-0)
ldconfig -p 2>/dev/null | grep -q 'libpangoft2-1.0.so.0' || need+=(libpangoft2-1.0-0)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)
command -v lintian >/dev/null 2>&1 || need+=(lintian)  # the agent's .deb (test_agent_deb.py)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # verifies the agent's unit
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "installing system packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts packaged daemons on install; the project starts its own. Only the
# daemons of the packages installed just now are stopped: one that already ran here
# (this machine's own NATS, say) is left alone.
for pkg in prometheus prometheus-alertmanager nats-server; do
  [[ " ${need[*]} " == *" $pkg "* ]] || continue
  $SUDO systemctl disable --now "$pkg" >/dev/null 2>&1 || true
  if [ "$pkg" = prometheus ]; then
    $SUDO systemctl disable --now prometheus-node-exporter >/dev/null 2>&1 || true
  fi
done
