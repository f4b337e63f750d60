# runner-agent %postun: tell systemd the unit file is gone (erase) or changed (upgrade).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
exit 0
