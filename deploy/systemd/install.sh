#!/bin/sh
# Installs hoptrace on a plain Linux VM run by systemd: the binary, the configuration and
# the unit. Run from the repository, as root:
#
#   deploy/systemd/install.sh target/release/hoptrace
#
# An existing /etc/hoptrace/hoptrace.yaml is kept (it holds your endpoint); the shipped
# one is then written next to it as hoptrace.yaml.dist. The configuration is checked with
# the installed binary before the unit is installed. With DESTDIR=/some/dir, everything is
# installed under that directory instead (packaging; the tests) and systemd is not told.
set -eu

bin=${1:?usage: deploy/systemd/install.sh path/to/hoptrace}
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest=${DESTDIR:-}

install -D -m 0755 "$bin" "$dest/usr/local/bin/hoptrace"
install -d -m 0755 "$dest/etc/hoptrace"
if [ -e "$dest/etc/hoptrace/hoptrace.yaml" ]; then
    install -m 0644 "$repo/deploy/hoptrace.yaml" "$dest/etc/hoptrace/hoptrace.yaml.dist"
    echo "kept $dest/etc/hoptrace/hoptrace.yaml; the shipped one is hoptrace.yaml.dist"
else
    install -m 0644 "$repo/deploy/hoptrace.yaml" "$dest/etc/hoptrace/hoptrace.yaml"
fi
"$dest/usr/local/bin/hoptrace" --check-config "$dest/etc/hoptrace/hoptrace.yaml"
install -D -m 0644 "$repo/deploy/systemd/hoptrace.service" "$dest/etc/systemd/system/hoptrace.service"
if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "installed; set exporter.endpoint in $dest/etc/hoptrace/hoptrace.yaml, then: systemctl enable --now hoptrace"
