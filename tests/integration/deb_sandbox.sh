#!/bin/sh
# Install, reinstall, re-configure and purge the agent's .deb in a throw-away root
# (tests/integration/test_agent_deb.py). Run as root inside `unshare -m` (a private mount
# namespace): /usr, /etc and /var are overlays on the host's, so dpkg, adduser and the
# maintainer scripts change only files under $1/up. Prints "fact: value" lines.
set -eu
S="$1"; DEB="$2"
R="$S/root"
mount --make-rprivate /
for d in usr etc var; do
  mkdir -p "$R/$d" "$S/up/$d" "$S/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$S/up/$d,workdir=$S/work/$d" "$R/$d"
done
for l in bin lib lib64 sbin; do ln -s "usr/$l" "$R/$l"; done
mkdir -p "$R/dev" "$R/tmp" "$R/run" "$R/proc"
mount --bind /dev "$R/dev"
mount -t proc proc "$R/proc"
cp "$DEB" "$R/tmp/pkg.deb"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
in_root() { chroot "$R" "$@"; }

in_root dpkg -i /tmp/pkg.deb >&2          # first install: configure with no old version
in_root dpkg -i /tmp/pkg.deb >&2          # reinstall: prerm upgrade, postinst configure 0.1.0
DPKG_MAINTSCRIPT_PACKAGE=kioskfleet-agent DPKG_MAINTSCRIPT_NAME=postinst \
  in_root /var/lib/dpkg/info/kioskfleet-agent.postinst configure 0.1.0 >&2   # once more
echo "users: $(grep -c '^kioskfleet:' "$R/etc/passwd")"
echo "groups: $(grep -c '^kioskfleet:' "$R/etc/group")"
echo "shell: $(in_root getent passwd kioskfleet | cut -d: -f7)"
echo "overrides: $(grep -c ' /etc/kioskfleet/agent.toml$' "$R/var/lib/dpkg/statoverride")"
echo "agent.toml: $(in_root stat -c '%U:%G %a' /etc/kioskfleet/agent.toml)"
echo "enabled: $(readlink "$R/etc/systemd/system/multi-user.target.wants/kioskfleet-agent.service")"
echo "bytecode: $(find "$R/opt/kioskfleet-agent/lib/agent" -name 'launcher.*.pyc' | wc -l)"
echo "help: $(in_root /usr/bin/kioskfleet-agent-launcher --help | head -n 1)"
echo "status: $(in_root dpkg-query -W -f '${Status}' kioskfleet-agent)"
mkdir -p "$R/var/lib/kioskfleet/agent-slots"  # state the agent would have made
in_root dpkg --purge kioskfleet-agent >&2
echo "purged opt: $(test -e "$R/opt/kioskfleet-agent" && echo present || echo gone)"
echo "purged state: $(test -e "$R/var/lib/kioskfleet" && echo present || echo gone)"
echo "purged overrides: $(grep -c ' /etc/kioskfleet/agent.toml$' "$R/var/lib/dpkg/statoverride" || true)"
echo "purged users: $(grep -c '^kioskfleet:' "$R/etc/passwd")"
