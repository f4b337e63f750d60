# runner-agent %preun: on erase ($1 = 0) stop and disable the agent. Runners keep running under
# their own units and stay registered; configuration and state stay (rpm has no purge: see
# packaging/README.md for removing everything).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now runner-agent.service >/dev/null 2>&1 || :
fi
exit 0
