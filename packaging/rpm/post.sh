# runner-agent %post: directories, the configuration on first install, and how to enable the
# service (installed disabled: it cannot run before a configuration with credentials exists).
# Configuration readable by group runner (the board job hooks run agentctl as the runner user);
# secret files in it are root's alone (0600).
install -d -m 0750 -o root -g runner /etc/runner-agent /etc/runner-agent/boards
install -d -m 0755 -o root -g root /var/lib/runner-agent /var/lib/runner-agent/runners /var/cache/runner-agent
# Board leases and relay-bus locks, written by the job hooks as the runner user.
install -d -m 2770 -o root -g runner /var/lib/runner-agent/boards
install -d -m 0750 -o runner -g runner /var/lib/runner-agent/home
# Copied on first install only: upgrades and reinstalls never touch an existing agent.toml.
if [ ! -e /etc/runner-agent/agent.toml ]; then
    install -m 0640 -o root -g runner /usr/share/runner-agent/agent.toml.example /etc/runner-agent/agent.toml
    echo "runner-agent: installed the example configuration as /etc/runner-agent/agent.toml"
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    # Upgrade ($1 = 2): an agent that was running gets the new binary; runner units are separate
    # units and keep running, registered, through the restart.
    if [ "$1" -ge 2 ]; then
        systemctl try-restart runner-agent.service || :
    fi
fi
if [ "$1" -eq 1 ]; then
    cat <<'HINT'
runner-agent: runner-agent.service is installed but not enabled. To start it:
  1. edit /etc/runner-agent/agent.toml (`[github] url`, runners, boards)
  2. write the credential it names, readable by root only:
       install -m 600 /dev/stdin /etc/runner-agent/github-pat   # paste the token, then Ctrl-D
     and hand it to the service: `systemctl edit runner-agent.service`, then add
       [Service]
       LoadCredential=github-pat:/etc/runner-agent/github-pat
  3. agentctl config check && systemctl enable --now runner-agent.service
HINT
fi
exit 0
