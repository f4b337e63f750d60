# shellcheck shell=bash
# Stage of tests/e2e/run (sourced, in the booted guest): the packaged agent, driven by its own
# daemon, against the GitHub emulator on the host's loopback (the guest shares the host network).
#
# dpkg -i, agent.toml (three runners, systemd backend, one bound to the fake board) and the PAT,
# `systemctl enable --now runner-agent`; then, through the emulator's REST/control API and
# `systemctl` in the guest:
#   - the runners register and come online; their `actions.runner.*` units (svc.sh's) are active
#     with our drop-in, run as the runner user with groups kvm and dialout; a job queued for each
#     opens /dev/kvm (and the board's tty) as that user and succeeds;
#   - `systemctl reboot` of the container: the same runner ids come back online, no registration;
#   - a runner deleted on GitHub is registered again and online within DAEMON_HEAL_SECS;
#   - the PAT file replaced by a new PAT and the old one revoked: picked up within 2 s without a
#     restart of the agent (same MainPID), still healthy (a registration made after that works);
#   - runner units stopping are told by systemd over D-Bus (units.rs), with the daemon's liveness
#     check and resync set to an hour so that only the event can act: a deleted registration (the
#     listener cleans up and exits 0) and a session conflict (exit 5); `agentctl status` names
#     each exit, the first is registered again, the second waits for the old session and starts
#     again; without a system bus the daemon says so (with a hint) and keeps running;
#   - a `service = "process"` runner added by reload runs in a scope of its own (systemd-run),
#     so `systemctl restart runner-agent` during its job leaves the listener and the job running;
#   - `apt-get purge runner-agent`: no registration of this host on GitHub, no runner unit, no
#     runner directory, no runner process.
#
# Uses what run defines: W, M, LOOP, pids, log, die, ok, not_ok, check, expect, in_guest, leader,
# wait_running, poll, main_pid. Needs the test binaries of this workspace (github-emulator,
# fake-runner-release, fake-runner-listener: `cargo build -p runner-agent-tests --bins`).

DAEMON_VERSION=2.336.0
DAEMON_REPO=octo/e2e
DAEMON_HEAL_SECS=60
# The runners of this stage: name and the label that sends a job to it alone.
DAEMON_RUNNERS=(e2e-kvm-1 e2e-kvm-2 e2e-board)
DAEMON_BOARD_RUNNER=e2e-board


daemon_stage() {
    log "daemon: the packaged agent keeps runners registered, against the emulator"
    local tdir bin
    tdir=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    bin=${E2E_TEST_BIN_DIR:-${tdir:-target}/debug}
    for b in github-emulator fake-runner-release fake-runner-listener; do
        [ -x "$bin/$b" ] || die "\`$bin/$b\` is missing (hint: \`cargo build -p runner-agent-tests --bins\`)"
    done

    # --- binaries built on the host must run in the bookworm guest ------------------------------
    # The highest glibc symbol version each binary needs against the guest's glibc.
    local glibc need b
    glibc=$(in_guest dpkg-query -W -f '${Version}' libc6 2>/dev/null | sed 's/^\([0-9]*\.[0-9]*\).*/\1/')
    for b in "$W/root/usr/bin/agentctl" "$bin/fake-runner-listener"; do
        need=$(grep -ao 'GLIBC_[0-9][0-9.]*' "$b" | sed 's/GLIBC_//' | sort -Vu | tail -n 1)
        check "daemon: $(basename "$b") needs glibc ${need:-?}, the guest has ${glibc:-?}" \
            test "$(printf '%s\n%s\n' "$need" "$glibc" | sort -V | tail -n 1)" = "$glibc"
    done
    cp "$bin/fake-runner-listener" "$W/root/var/tmp/listener-probe"
    check "daemon: the fake listener built on the host runs in the guest" \
        in_guest /var/tmp/listener-probe --version
    rm -f "$W/root/var/tmp/listener-probe"

    # The label that marks this host's runners (runner::owner_label of the guest's hostname).
    DAEMON_MARKER=host-$(in_guest hostname | tr 'A-Z' 'a-z' | tr -c 'a-z0-9._\n-' '-')

    # --- the emulator on the host's loopback, the fake runner release published on it ----------
    "$bin/github-emulator" --seed-repo "$DAEMON_REPO" --long-poll-secs 5 \
        >"$W/emulator.out" 2>"$W/emulator.log" &
    pids+=($!)
    for _ in $(seq 1 100); do grep -q '^repo=' "$W/emulator.out" 2>/dev/null && break; sleep 0.1; done
    EMU=$(sed -n 's/^url=//p' "$W/emulator.out")
    local web_url pat
    web_url=$(sed -n 's/^repo=.* web_url=\([^ ]*\) .*/\1/p' "$W/emulator.out")
    pat=$(sed -n 's/^repo=.* pat=\([^ ]*\)$/\1/p' "$W/emulator.out")
    [ -n "$EMU" ] && [ -n "$pat" ] || { cat "$W/emulator.log"; die "the github emulator did not start"; }
    local tarball
    tarball=$("$bin/fake-runner-release" --version "$DAEMON_VERSION" --arch x64 \
        --listener "$bin/fake-runner-listener" --out "$W/release" | cut -d' ' -f1)
    [ -f "$tarball" ] || die "cannot build the fake runner release"
    emu POST /releases "{\"version\": \"$DAEMON_VERSION\", \"assets\": {\"linux-x64\": \"$tarball\"}}" >/dev/null \
        || die "cannot publish the fake runner release on the emulator"

    # --- start from a guest without the packaging section's stand-ins --------------------------
    in_guest sh -c 'systemctl disable --now --quiet actions.runner.e2e.service actions.runner.from-agent.service 2>/dev/null
        rm -f /etc/systemd/system/actions.runner.*.service /usr/local/bin/e2e-agent-standin
        rm -rf /etc/systemd/system/runner-agent.service.d
        systemctl daemon-reload'

    # --- install, configure, enable -----------------------------------------------------------
    local out rc
    out=$(in_guest dpkg -i /var/tmp/agent.deb 2>&1); rc=$?
    expect "daemon: dpkg -i exits 0" 0 "$rc"
    [ $rc -eq 0 ] || echo "$out" | tail -n 20
    daemon_config "$web_url" | in_guest sh -c 'cat > /etc/runner-agent/agent.toml'
    printf '%s\n' "$pat" | in_guest install -m 600 /dev/stdin /etc/runner-agent/github-pat
    # What the postinst says to do: hand the credential to the service.
    in_guest sh -c 'mkdir -p /etc/systemd/system/runner-agent.service.d && printf "%s\n" "[Service]" \
        "LoadCredential=github-pat:/etc/runner-agent/github-pat" > /etc/systemd/system/runner-agent.service.d/credential.conf'
    out=$(in_guest agentctl config check 2>&1); rc=$?
    expect "daemon: config check of three runners, one on the board" 0 "$rc"
    [ $rc -eq 0 ] || echo "$out" | tail -n 20
    local t0=$SECONDS
    check "daemon: systemctl enable --now runner-agent" in_guest systemctl enable --now --quiet runner-agent.service

    # --- registered, online, units, users, groups ------------------------------------------------
    check "daemon: three runners of this host online on GitHub" wait_for 60 all_online
    log "daemon: runners online $((SECONDS - t0)) s after enable --now"
    declare -gA DAEMON_IDS=()
    local name
    for name in "${DAEMON_RUNNERS[@]}"; do DAEMON_IDS[$name]=$(runner_id "$name"); done
    expect "daemon: exactly the configured registrations exist" \
        "$(printf '%s\n' "${DAEMON_RUNNERS[@]}" | sort | xargs)" "$(emu_names)"
    expect "daemon: each carries this host's marker ($DAEMON_MARKER)" 3 \
        "$(emu GET "/runners?scope=$DAEMON_REPO" | jq_py "sum(1 for r in d if '$DAEMON_MARKER' in r['labels'])")"
    local kvm_gid dialout_gid runner_uid
    kvm_gid=$(in_guest getent group kvm | cut -d: -f3)
    dialout_gid=$(in_guest getent group dialout | cut -d: -f3)
    runner_uid=$(in_guest id -u runner)
    for name in "${DAEMON_RUNNERS[@]}"; do
        local unit pid status
        unit=$(in_guest cat "/var/lib/runner-agent/runners/$name/.service" 2>/dev/null | tr -d '\357\273\277\r')
        expect "daemon: $name has svc.sh's unit" "actions.runner._services.$name.service" "$unit"
        check "daemon: $unit is active" poll in_guest systemctl is-active --quiet "$unit"
        check "daemon: $unit has our drop-in" bash -c \
            "nsenter -t $(leader) -a systemctl show -p DropInPaths --value '$unit' | grep -q '/etc/systemd/system/$unit.d/50-runner-agent.conf'"
        pid=$(main_pid "$unit")
        status=$(in_guest cat "/proc/$pid/status" 2>&1)
        expect "daemon: $name runs as the runner user" "$runner_uid" "$(awk '/^Uid:/ { print $2 }' <<<"$status")"
        check "daemon: $name runs with groups kvm ($kvm_gid) and dialout ($dialout_gid)" \
            proc_groups "$status" "$kvm_gid" "$dialout_gid"
    done
    daemon_jobs "first boot"

    # --- reboot: the same registrations come back ---------------------------------------------
    local old_leader boot_id
    old_leader=$(leader)
    boot_id=$(in_guest cat /proc/sys/kernel/random/boot_id)
    t0=$SECONDS
    in_guest systemctl reboot >/dev/null 2>&1
    wait_for 30 new_leader "$old_leader" >/dev/null
    local state
    state=$(wait_running) || { tail -n 30 "$W/console.log"; die "the container did not boot again: $state"; }
    check "daemon: the container rebooted (new boot id)" test "$(in_guest cat /proc/sys/kernel/random/boot_id)" != "$boot_id"
    check "daemon: runner-agent is active after the reboot" poll in_guest systemctl is-active --quiet runner-agent.service
    # Our drop-in orders the runners before the agent: the shutdown stopped the agent first.
    check "daemon: the agent did not try to start runners that the shutdown was stopping" bash -c \
        "! nsenter -t $(leader) -a journalctl -q -b -1 -u runner-agent.service | grep -q 'is destructive'"
    for name in "${DAEMON_RUNNERS[@]}"; do
        check "daemon: after the reboot, $name's unit is active" \
            poll in_guest systemctl is-active --quiet "actions.runner._services.$name.service"
    done
    # Online after the reboot: a job each (below) proves the runners listen again; the ids prove
    # that nothing registered again.
    daemon_jobs "after the reboot"
    log "daemon: reboot to every runner done a job: $((SECONDS - t0)) s"
    for name in "${DAEMON_RUNNERS[@]}"; do
        expect "daemon: after the reboot, $name has the same runner id" "${DAEMON_IDS[$name]}" "$(runner_id "$name")"
    done
    expect "daemon: after the reboot, still exactly the configured registrations" \
        "$(printf '%s\n' "${DAEMON_RUNNERS[@]}" | sort | xargs)" "$(emu_names)"

    # --- a registration deleted on GitHub --------------------------------------------------------
    daemon_heal e2e-kvm-2 "deleted on GitHub"

    # --- the PAT replaced, the old one revoked: picked up without a restart -----------------------
    # systemd copies a LoadCredential= file only when the service starts; the agent watches the
    # source the unit names and reads the new PAT from there.
    local new_pat agent_pid picked
    agent_pid=$(main_pid runner-agent.service)
    picked=$(pickups)
    new_pat=$(emu POST /tokens '{"kind": "classic", "scopes": ["repo"]}' | jq_py "d['token']")
    printf '%s\n' "$new_pat" | in_guest sh -c 'install -m 600 /dev/stdin /etc/runner-agent/github-pat.new && mv /etc/runner-agent/github-pat.new /etc/runner-agent/github-pat'
    check "daemon: the agent picked up the new PAT within 2 s (log: picked up the rotated secret)" \
        within_ms 2000 more_pickups "$picked"
    if ! more_pickups "$picked"; then
        in_guest journalctl -q -u runner-agent.service -b 2>/dev/null | tail -n 25 | sed 's/^/        | /'
        local apid; apid=$(main_pid runner-agent.service)
        in_guest sh -c "for f in /proc/$apid/fdinfo/*; do grep -H inotify \$f; done; ls -li /etc/runner-agent" | sed 's/^/        | /'
    fi
    expect "daemon: the old PAT is revoked on GitHub" True \
        "$(emu POST /tokens/revoke "{\"token\": \"$pat\"}" | jq_py "d['revoked']")"
    daemon_heal e2e-kvm-1 "deleted after the PAT was replaced"
    expect "daemon: the new PAT took no restart of the agent (same MainPID)" "$agent_pid" "$(main_pid runner-agent.service)"
    check "daemon: after the new PAT, every runner is online" wait_for 30 all_online
    for name in e2e-board e2e-kvm-2; do
        expect "daemon: the new PAT left $name's registration alone" "${DAEMON_IDS[$name]}" "$(runner_id "$name")"
    done
    check "daemon: the agent's log has no PAT" bash -c \
        "! nsenter -t $(leader) -a journalctl -q -u runner-agent.service | grep -qF -e '$pat' -e '$new_pat'"

    daemon_unit_events
    daemon_process_scope

    # --- purge ---------------------------------------------------------------------------------
    out=$(in_guest env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q runner-agent 2>&1); rc=$?
    expect "daemon: apt-get purge exits 0" 0 "$rc"
    [ $rc -eq 0 ] || echo "$out" | tail -n 20
    expect "daemon: purge left no registration of this host on GitHub" "" "$(emu_names)"
    expect "daemon: purge left no actions.runner.* unit file" "" \
        "$(in_guest systemctl list-unit-files --no-legend 'actions.runner.*' 2>&1)"
    expect "daemon: purge left no actions.runner.* unit loaded" "" \
        "$(in_guest systemctl list-units --all --no-legend 'actions.runner.*' 2>&1)"
    check "daemon: purge left no unit or drop-in in /etc/systemd/system" \
        bash -c "! ls -d '$W'/root/etc/systemd/system/actions.runner.* 2>/dev/null | grep -q ."
    check "daemon: purge removed the runner directories (/var/lib/runner-agent)" in_guest test ! -e /var/lib/runner-agent
    check "daemon: purge removed /etc/runner-agent" in_guest test ! -e /etc/runner-agent
    check "daemon: no runner process is left" bash -c "! nsenter -t $(leader) -a pgrep -u runner >/dev/null"
}

# daemon_unit_events: runner unit exits reach the daemon as D-Bus events (system bus, then the
# private socket), their reasons are shown by `agentctl status` and healed as exits.rs says.
daemon_unit_events() {
    local since name unit old t0 main listener
    # Only an event can start a pass: no liveness check, no resync within the test.
    in_guest sh -c 'printf "%s\n" "[Service]" "ExecStart=" \
        "ExecStart=/usr/bin/agentctl daemon --check-secs 3600 --resync-secs 3600 --session-wait-secs 10" \
        > /etc/systemd/system/runner-agent.service.d/e2e-events.conf && systemctl daemon-reload'
    check "dbus: the guest runs a system bus" in_guest systemctl is-active --quiet dbus.service
    since=$(in_guest date '+%Y-%m-%d %H:%M:%S')
    check "dbus: restart runner-agent with --check-secs 3600 --resync-secs 3600" \
        in_guest systemctl restart runner-agent.service
    check "dbus: the daemon watches the runner units through the system bus" \
        wait_for 20 agent_log "$since" 'watching the runner units through the system bus'
    wait_for 30 all_online

    # A registration deleted on GitHub: the listener removes its configuration and exits 0.
    name=e2e-kvm-2 unit=actions.runner._services.e2e-kvm-2.service
    old=$(runner_id "$name") t0=$SECONDS
    check "dbus: $name deleted on GitHub" emu DELETE "/runners/$old"
    check "dbus: the daemon was told that $unit stopped (system bus)" \
        wait_for 30 agent_log "$since" "runner unit \`$unit\` stopped: inactive (dead), exit status 0"
    check "dbus: $name registered again and online (no poll for an hour)" wait_for 40 renewed "$name" "$old"
    log "dbus: $name deleted to online again through the unit event: $((SECONDS - t0)) s"
    check "dbus: agentctl status names the deleted registration" wait_for 10 status_says \
        "  $name: running, [0-9]* restart(s), last exit 0 (registration deleted on GitHub (local configuration removed by the runner))$"
    DAEMON_IDS[$name]=$(runner_id "$name")

    # A session conflict: the listener killed (its session stays open on GitHub), runsvc.sh
    # starts another, which meets that session, gives up with exit 5 and the unit stops.
    name=e2e-kvm-1 unit=actions.runner._services.e2e-kvm-1.service
    wait_for 30 runner_online "$name"
    old=$(runner_id "$name")
    printf '%s\n' FAKE_RUNNER_SESSION_CONFLICT_SECONDS=1 FAKE_RUNNER_SESSION_RETRY_SECONDS=1 \
        | in_guest sh -c "cat > /var/lib/runner-agent/runners/$name/.env && chmod 644 /var/lib/runner-agent/runners/$name/.env"
    main=$(main_pid "$unit")
    since=$(in_guest date '+%Y-%m-%d %H:%M:%S')
    # No pgrep or kill in the minbase guest: the listener is the child of runsvc.sh named so.
    listener=$(in_guest sh -c "for d in /proc/[0-9]*; do [ \"\$(cat \$d/comm 2>/dev/null)\" = Runner.Listener ] \
        && grep -q '^PPid:[[:space:]]*$main\$' \$d/status && echo \${d#/proc/}; done" | head -n 1)
    check "dbus: $name's listener killed (pid ${listener:-none})" in_guest sh -c "kill -KILL ${listener:-none}"
    check "dbus: the daemon was told that $unit stopped (system bus)" \
        wait_for 40 agent_log "$since" "runner unit \`$unit\` stopped: inactive (dead), exit status 0"
    check "dbus: agentctl status names the session conflict and waits" wait_for 10 status_says \
        "  $name: session-conflict, [0-9]* restart(s), last exit 5 (session conflict)$"
    check "dbus: the daemon does not start $name during the wait" bash -c \
        "! nsenter -t $(leader) -a systemctl is-active --quiet $unit"
    # The old session expires on GitHub (90 s without a poll); the daemon's wait ends after 10 s.
    emu POST /clock/advance '{"seconds": 120}' >/dev/null
    check "dbus: after the wait, $name is online again with the same registration" \
        wait_for 40 same_online "$name" "$old"
    check "dbus: agentctl status says $name runs again" wait_for 10 status_says "  $name: running, "
    in_guest rm -f "/var/lib/runner-agent/runners/$name/.env"

    # No system bus: the daemon says so once and keeps running on its liveness check.
    in_guest systemctl stop dbus.socket dbus.service >/dev/null 2>&1
    check "dbus: the system bus is stopped" bash -c "! nsenter -t $(leader) -a systemctl is-active --quiet dbus.socket dbus.service"
    since=$(in_guest date '+%Y-%m-%d %H:%M:%S')
    check "dbus: restart runner-agent without a system bus" in_guest systemctl restart runner-agent.service
    check "dbus: without a system bus the daemon says it relies on its liveness check, with a hint" \
        wait_for 20 agent_log "$since" 'hint: start the system bus (`dbus`) so that systemd can tell the agent'
    check "dbus: without a system bus the agent stays active" in_guest systemctl is-active --quiet runner-agent.service

    # Back to the packaged settings.
    in_guest sh -c 'rm -f /etc/systemd/system/runner-agent.service.d/e2e-events.conf && systemctl daemon-reload
        systemctl start dbus.socket dbus.service && systemctl restart runner-agent.service'
    expect "dbus: still exactly the configured registrations" \
        "$(printf '%s\n' "${DAEMON_RUNNERS[@]}" | sort | xargs)" "$(emu_names)"
}
# daemon_process_scope: a `service = "process"` runner (what JIT slots use too) is started in a
# scope of its own, not in runner-agent.service's cgroup, so `systemctl restart runner-agent`
# (what a package upgrade runs) leaves it and its running job alone.
daemon_process_scope() {
    local name=e2e-proc dir=/var/lib/runner-agent/runners/e2e-proc pid id job out output script t0
    printf '\n[[runner]]\nname = "%s"\nservice = "process"\nlabels = ["%s"]\n' "$name" "$name" \
        | in_guest sh -c 'cat >> /etc/runner-agent/agent.toml'
    check "process: systemctl reload runner-agent (a process runner added)" \
        in_guest systemctl reload runner-agent.service
    check "process: $name registered and online" wait_for 60 runner_online "$name"
    id=$(runner_id "$name")
    pid=$(in_guest cat "/var/lib/runner-agent/runners/$name.pid" 2>/dev/null | jq_py "d['pid']" 2>/dev/null)
    check "process: $name runs (pid ${pid:-none})" in_guest test -n "$pid" -a -d "/proc/${pid:-none}"
    out=$(in_guest cat "/proc/${pid:-none}/cgroup" 2>&1)
    check "process: $name is in a scope of its own, not in runner-agent.service's cgroup ($out)" \
        own_scope "$out"
    expect "process: $name runs as the runner user" "$(in_guest id -u runner)" \
        "$(in_guest awk '/^Uid:/ { print $2 }' "/proc/${pid:-none}/status" 2>&1)"

    # A job that waits for a file, held while the agent restarts.
    in_guest rm -f "$dir/go"
    script='exec 3<>/dev/kvm; echo "kvm-open user=$(id -un) groups=$(id -Gn | tr " " ,)"; '
    script+="while [ ! -e $dir/go ]; do sleep 0.2; done; echo survived-the-restart"
    job=$(emu POST /jobs "$(printf '%s' "$script" | /usr/bin/python3 -c \
        "import json, sys; print(json.dumps({'scope': '$DAEMON_REPO', 'labels': ['$name'], 'script': sys.stdin.read()}))")" \
        | jq_py "d['id']")
    check "process: a job runs on $name" wait_for 30 job_on "$job" "$name"
    t0=$SECONDS
    check "process: systemctl restart runner-agent during the job" in_guest systemctl restart runner-agent.service
    check "process: runner-agent is active again" poll in_guest systemctl is-active --quiet runner-agent.service
    check "process: $name's listener outlived the restart (pid $pid)" in_guest test -d "/proc/${pid:-none}"
    expect "process: the job is still running after the restart" "None" \
        "$(emu GET "/jobs/$job" | jq_py "d.get('result')")"
    in_guest touch "$dir/go"
    out=$(emu GET "/jobs/$job/wait?timeout=60" || echo '{}')
    expect "process: the job finished on $name and succeeded" "$name succeeded" \
        "$(jq_py "'%s %s' % (d.get('runner_name'), d.get('result'))" <<<"$out")"
    output=$(jq_py "d.get('output') or ''" <<<"$out")
    check "process: the job went on to its end across the restart" grep -q survived-the-restart <<<"$output"
    check "process: the job opened /dev/kvm as the runner user, groups kvm and dialout" \
        job_groups_ok "$output"
    check "process: $name online with the same registration after the restart" \
        wait_for 30 same_online "$name" "$id"
    log "process: restart during a job to the job done: $((SECONDS - t0)) s"
}
# own_scope CGROUP: /proc/<pid>/cgroup text of a transient scope, not of the agent's service.
own_scope() { grep -q '\.scope$' <<<"$1" && ! grep -q 'runner-agent\.service' <<<"$1"; }
# job_on ID NAME: job ID runs on runner NAME and has not finished.
job_on() {
    emu GET "/jobs/$1" | jq_py "'%s %s' % (d.get('runner_name'), d.get('result'))" | grep -qx "$2 None"
}
# agent_log SINCE TEXT: the agent's journal since SINCE has TEXT.
agent_log() { in_guest journalctl -q -o cat -u runner-agent.service --since "$1" | grep -qF -- "$2"; }
# status_says REGEX: a line of `agentctl status` starts with a match of REGEX (basic regex).
status_says() { in_guest agentctl status 2>/dev/null | grep -q -- "^$1"; }
same_online() { [ "$(runner_id "$1")" = "$2" ] && runner_online "$1"; }

# The configuration: two KVM runners and one on the fake board, each with a label of its own.
daemon_config() {
    cat <<TOML
version = 1

[github]
url = "$1"
pat_file = "github-pat"

[defaults]
user = "runner"
version = "$DAEMON_VERSION"
service = "systemd"
labels = ["e2e"]

[[runner]]
name = "e2e-kvm-1"
labels = ["e2e-kvm-1"]

[[runner]]
name = "e2e-kvm-2"
labels = ["e2e-kvm-2"]

[[runner]]
name = "e2e-board"
board = "fake0"
labels = ["e2e-board"]

[[board]]
name = "fake0"
labels = ["fakeboard"]

[board.console]
path = "/dev/serial/by-id/usb-FakeVendor_FakeBoard_0001-if00-port0"
baud = 115200
TOML
}

# emu METHOD PATH [JSON]: the emulator's control API.
emu() {
    curl -sf -X "$1" -H 'content-type: application/json' ${3:+--data "$3"} "$EMU/_emulator$2"
}
# jq_py EXPR: EXPR of the JSON on stdin (as `d`), printed.
jq_py() { /usr/bin/python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
emu_names() {
    emu GET "/runners?scope=$DAEMON_REPO" | jq_py "' '.join(sorted(r['name'] for r in d))"
}
# runner_id NAME: the id GitHub has for NAME (empty when none).
runner_id() {
    emu GET "/runners?scope=$DAEMON_REPO" \
        | jq_py "next((str(r['id']) for r in d if r['name'] == '$1'), '')"
}
runner_online() {
    emu GET "/runners?scope=$DAEMON_REPO" \
        | jq_py "next((r['status'] + ' ' + str(r['session_open']) for r in d if r['name'] == '$1'), '')" \
        | grep -qx 'online True'
}
all_online() {
    local name
    for name in "${DAEMON_RUNNERS[@]}"; do runner_online "$name" || return 1; done
}
# proc_groups STATUS GID...: /proc/<pid>/status text lists every GID in `Groups:`.
proc_groups() {
    local groups g
    groups=$(awk '/^Groups:/ { for (i = 2; i <= NF; i++) print $i }' <<<"$1")
    shift
    for g in "$@"; do grep -qx "$g" <<<"$groups" || return 1; done
}
new_leader() { local l; l=$(leader 2>/dev/null) && [ -n "$l" ] && [ "$l" != "$1" ]; }
# wait_for SECS COMMAND...: poll COMMAND every 0.2 s until it succeeds or SECS pass.
wait_for() {
    local end=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.2
    done
}

# daemon_jobs WHEN: a job for each runner opens /dev/kvm (and the board's console) as the runner
# user and succeeds.
daemon_jobs() {
    local when=$1 name script id job marker output
    declare -A jobs=()
    for name in "${DAEMON_RUNNERS[@]}"; do
        script='exec 3<>/dev/kvm; echo "kvm-open user=$(id -un) groups=$(id -Gn | tr " " ,)"'
        if [ "$name" = "$DAEMON_BOARD_RUNNER" ]; then
            marker="E2E-JOB $when $RANDOM"
            # BOARD_COMM_UART_DEV comes from the board environment the agent gives the runner.
            script+='; exec 4<>"$BOARD_COMM_UART_DEV"; stty -F "$BOARD_COMM_UART_DEV" 115200 raw -echo; printf "%s\n" "'"$marker"'" >&4; echo "console-open $BOARD_COMM_UART_DEV"'
        fi
        id=$(emu POST /jobs "$(printf '%s' "$script" | /usr/bin/python3 -c \
            "import json, sys; print(json.dumps({'scope': '$DAEMON_REPO', 'labels': ['$name'], 'script': sys.stdin.read()}))")" \
            | jq_py "d['id']")
        jobs[$name]=$id
    done
    for name in "${DAEMON_RUNNERS[@]}"; do
        job=$(emu GET "/jobs/${jobs[$name]}/wait?timeout=60" || echo '{}')
        expect "daemon ($when): the job for $name ran on it and succeeded" "$name succeeded" \
            "$(jq_py "'%s %s' % (d.get('runner_name'), d.get('result'))" <<<"$job")"
        output=$(jq_py "d.get('output') or ''" <<<"$job")
        grep -q '"result": *"succeeded"' <<<"$job" || printf '        | %s\n' "${output:-(no output)}" | tail -n 15
        check "daemon ($when): $name's job opened /dev/kvm as runner, groups kvm and dialout" \
            job_groups_ok "$output"
        if [ "$name" = "$DAEMON_BOARD_RUNNER" ]; then
            check "daemon ($when): the board job opened the console" grep -q 'console-open /dev/serial/by-id/' <<<"$output"
            check "daemon ($when): the fake board received the job's line" \
                poll grep -qF "RX b'$marker'" "$W/board.log"
        fi
    done
}

# job_groups_ok OUTPUT: the job's `kvm-open user=runner groups=a,b,c` line names kvm and dialout.
job_groups_ok() {
    local groups
    groups=$(sed -n 's/.*kvm-open user=runner groups=\([^ ]*\).*/\1/p' <<<"$1" | head -n 1)
    [ -n "$groups" ] && grep -qx kvm <<<"${groups//,/$'\n'}" && grep -qx dialout <<<"${groups//,/$'\n'}"
}

# daemon_heal NAME WHY: delete NAME's registration on GitHub; the agent registers it again.
daemon_heal() {
    local name=$1 why=$2 old t0=$SECONDS
    old=$(runner_id "$name")
    check "daemon: $name $why" emu DELETE "/runners/$old"
    check "daemon: $name ($why) registered again and online within ${DAEMON_HEAL_SECS} s" \
        wait_for "$DAEMON_HEAL_SECS" renewed "$name" "$old"
    log "daemon: $name ($why) back online in $((SECONDS - t0)) s"
    local new
    new=$(runner_id "$name")
    expect "daemon: $name's directory holds the new registration" "$new" \
        "$(in_guest sed -n 's/.*"agentId": *\([0-9]*\).*/\1/p' "/var/lib/runner-agent/runners/$name/.runner" 2>&1 | head -n 1)"
    expect "daemon: still exactly the configured registrations" \
        "$(printf '%s\n' "${DAEMON_RUNNERS[@]}" | sort | xargs)" "$(emu_names)"
    DAEMON_IDS[$name]=$new
}
# pickups: how often the agent said it read a rotated secret from its LoadCredential= source
pickups() { in_guest journalctl -q -u runner-agent.service 2>/dev/null | grep -c 'picked up the rotated secret'; }
more_pickups() { [ "$(pickups)" -gt "$1" ]; }
# within_ms MS COMMAND...: COMMAND succeeds within MS milliseconds (polled every 0.1 s)
within_ms() {
    local end=$(( $(date +%s%3N) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s%3N)" -lt "$end" ] || return 1
        sleep 0.1
    done
}
renewed() { local id; id=$(runner_id "$1"); [ -n "$id" ] && [ "$id" != "$2" ] && runner_online "$1"; }

daemon_stage
