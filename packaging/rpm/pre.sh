# runner-agent %pre: the runner user and its groups exist before any file is installed.
# The `kvm` group normally comes from udev (systemd-udev on Fedora); minimal systems and containers
# lack it, and /dev/kvm access is granted through it, so it is created when missing.
for g in runner kvm dialout; do
    getent group "$g" >/dev/null || groupadd -r "$g"
done
# A system account without password or login shell, for runner listeners and their jobs; its
# home, under the state directory, holds the caches job tools keep in $HOME.
getent passwd runner >/dev/null || \
    useradd -r -g runner -d /var/lib/runner-agent/home -M -s /sbin/nologin \
        -c 'GitHub Actions runners (runner-agent)' runner
usermod -a -G kvm,dialout runner
exit 0
