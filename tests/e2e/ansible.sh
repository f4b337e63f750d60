#!/usr/bin/env bash
# End-to-end test of the Ansible role (packaging/ansible, role runner_agent) on a real systemd.
#
# A Debian bookworm rootfs (the one tests/e2e/run caches, plus python3 and python3-apt, which
# Ansible modules need; cached too) boots with systemd as PID 1 in systemd-nspawn (host network,
# a private /dev/kvm node, a fake board's pty). The GitHub emulator runs on the host's loopback,
# so doctor's github checks reach it from the guest. ansible-playbook drives the guest through the
# `community.docker.nsenter` connection (the container's PID 1) with the example playbook:
#   0. --check --diff on the fresh guest: reports the package, changes nothing;
#   1. apply: installs the .deb, writes agent.toml, the PAT and the LoadCredential drop-in, starts
#      the service, doctor finds nothing failing;
#   2. apply again: changed=0, the agent was not restarted;
#   3. --check --diff with another label: shows the diff, changes nothing;
#   4. a configuration `agentctl config check` refuses: the play fails, nothing changed;
#   5. a doctor check that fails: the play fails with the check's id and hint;
#   6. the new label for real: agent.toml changes, the agent reloads it (no restart);
#   7. the PAT rotated on the emulator: the new one replaces the file, the agent picks it up from
#      the LoadCredential= source within 2 s, without a restart;
# and the PAT never appears in any output; ansible-lint (production profile) is clean.
#
# usage: bash tests/e2e/ansible.sh [DEB]   (default: the newest target/debian/runner-agent_*.deb;
#                                           run `bash scripts/package` first)
# Needs root, systemd-nspawn, debootstrap, ansible, ansible-lint (`bash scripts/setup`). Ends with
# `N passed, M failed`; exits 1 when anything failed, 2 when the harness itself could not run.
# tests/e2e/run calls it (with E2E_LOCK_HELD=1: it holds the e2e lock). E2E_CACHE and E2E_KEEP=1
# as for tests/e2e/run.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
HERE=tests/e2e
ROLE_DIR=packaging/ansible

W=$(mktemp -d /tmp/runner-agent-e2e-ansible.XXXXXX)
M=ra-e2e-ansible
HOST=e2e-guest
T0=$(date +%s)
passed=0 failed=0
pids=()
LOOP=""

log() { printf '[%3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { echo "error: $*" >&2; exit 2; }

ok() { passed=$((passed + 1)); echo "ok    - $1"; }
not_ok() { failed=$((failed + 1)); echo "FAIL  - $1"; [ -n "${2:-}" ] && printf '        %s\n' "$2"; return 0; }
# check DESCRIPTION COMMAND...: passes when COMMAND exits 0
check() { local d=$1; shift; local out; if out=$("$@" 2>&1); then ok "$d"; else not_ok "$d" "$(echo "$out" | tail -n 5 | tr '\n' '|')"; fi; }
# expect DESCRIPTION EXPECTED ACTUAL
expect() { if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected \`$2\`, got \`$3\`"; fi; }

leader() { local n; n=$(pgrep -P "$LOOP" | head -n 1) || return 1; pgrep -P "$n" | head -n 1; }
in_guest() { local l; l=$(leader) || return 125; nsenter -t "$l" -a "$@"; }

cleanup() {
    set +e
    if [ -n "$LOOP" ] && kill -0 "$LOOP" 2>/dev/null; then
        touch "$W/stop"
        in_guest systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 1 50); do kill -0 "$LOOP" 2>/dev/null || break; sleep 0.2; done
        local n; n=$(pgrep -P "$LOOP" | head -n 1)
        [ -n "$n" ] && kill "$n" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$LOOP" 2>/dev/null || break; sleep 0.2; done
        [ -n "$n" ] && kill -KILL "$n" 2>/dev/null
        kill "$LOOP" 2>/dev/null
        wait "$LOOP" 2>/dev/null
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    # nspawn with --keep-unit and no host systemd leaves its cgroups behind (e2e-harness.md).
    # Only when no other container runs: tests/e2e/run may still have its own up.
    if ! pgrep -x systemd-nspawn >/dev/null; then
        for d in /sys/fs/cgroup/systemd/payload /sys/fs/cgroup/systemd/supervisor \
                 /sys/fs/cgroup/unified/payload /sys/fs/cgroup/unified/supervisor; do
            [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
        done
    fi
    mountpoint -q "$W/pyroot/proc" 2>/dev/null && umount "$W/pyroot/proc"
    if [ -n "${E2E_KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

[ "$(id -u)" = 0 ] || die "the e2e test needs root"
for tool in systemd-nspawn debootstrap nsenter ansible-playbook ansible-lint cargo; do
    command -v "$tool" >/dev/null || die "\`$tool\` is missing (hint: run \`bash scripts/setup\`)"
done
# shellcheck disable=SC2012 # the newest by time, as tests/e2e/run picks it
DEB=${1:-$(ls -t target/debian/runner-agent_*.deb 2>/dev/null | head -n 1)}
[ -f "$DEB" ] || die "no .deb to test (hint: run \`bash scripts/package\`)"
if [ -z "${E2E_LOCK_HELD:-}" ]; then
    # One e2e run at a time on a machine (shared network, nspawn's cgroups); see tests/e2e/run.
    exec 9>/run/lock/runner-agent-e2e.lock
    flock -w 900 9 || die "another e2e run holds /run/lock/runner-agent-e2e.lock"
fi
mkdir -p "$W/files"
cp "$DEB" "$W/files/" || die "cannot copy $DEB"
DEB=$W/files/$(basename "$DEB")
log "testing the Ansible role with $DEB in $W"

# --- lint ------------------------------------------------------------------------------------------
out=$(cd "$ROLE_DIR" && ansible-lint --nocolor 2>&1); rc=$?
expect "ansible-lint (production profile) on $ROLE_DIR is clean" 0 "$rc"
[ $rc -eq 0 ] || echo "$out" | tail -n 30

# --- the rootfs: tests/e2e/run's, plus python3 for Ansible's modules (cached next to it) -----------
base=$(bash "$HERE/run" --prepare | sed -n 's/.*rootfs ready: //p')
[ -s "$base" ] || die "tests/e2e/run --prepare made no rootfs"
TARBALL=${base%.tar}-python3.tar
if [ ! -s "$TARBALL" ]; then
    log "adding python3 and python3-apt to the rootfs (once), cached as $TARBALL"
    mkdir -p "$W/pyroot"
    tar -C "$W/pyroot" -xf "$base" || die "cannot unpack $base"
    cp /etc/resolv.conf "$W/pyroot/etc/resolv.conf"
    mount -t proc proc "$W/pyroot/proc" || die "cannot mount /proc in the chroot"
    { chroot "$W/pyroot" apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive chroot "$W/pyroot" apt-get install -y -qq --no-install-recommends python3 python3-apt \
        && chroot "$W/pyroot" apt-get clean; } >"$W/pyroot.log" 2>&1 \
        || { tail -n 20 "$W/pyroot.log"; die "cannot install python3 in the rootfs"; }
    umount "$W/pyroot/proc"
    rm -rf "$W/pyroot/var/lib/apt/lists/"*
    if ! { tar -C "$W/pyroot" -cf "$TARBALL.partial" . && mv "$TARBALL.partial" "$TARBALL"; }; then
        die "cannot write $TARBALL"
    fi
    rm -rf "$W/pyroot"
fi

# --- the GitHub emulator on the host's loopback ----------------------------------------------------
cargo build -q --locked -p runner-agent-tests --bin github-emulator || die "cannot build github-emulator"
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
"$target_dir/debug/github-emulator" --seed-repo octo/lab >"$W/emulator.out" 2>"$W/emulator.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^repo=' "$W/emulator.out" && break; sleep 0.1; done
URL=$(sed -n 's/^url=//p' "$W/emulator.out")
API_URL=$(sed -n 's/^api_url=//p' "$W/emulator.out")
PAT=$(sed -n 's/^repo=.* pat=//p' "$W/emulator.out")
if [ -z "$URL" ] || [ -z "$API_URL" ] || [ -z "$PAT" ]; then
    cat "$W/emulator.log"; die "the github emulator did not start"
fi

# --- the guest -------------------------------------------------------------------------------------
mkdir -p "$W/root" "$W/devs"
tar -C "$W/root" -xf "$TARBALL" || die "cannot unpack $TARBALL"
systemctl --root="$W/root" mask --quiet apt-daily.timer apt-daily-upgrade.timer
# debootstrap copied the build host's name; runner names are `{hostname}-...`.
echo "$M" >"$W/root/etc/hostname"
# What udev does on a real host: a kvm group owning /dev/kvm (the package then finds it).
chroot "$W/root" groupadd --system kvm || die "cannot create the kvm group in the guest"
KVM_GID=$(awk -F: '$1 == "kvm" { print $3 }' "$W/root/etc/group")
if ! { mknod "$W/devs/kvm" c 10 232 && chown 0:"$KVM_GID" "$W/devs/kvm" && chmod 660 "$W/devs/kvm"; }; then
    die "cannot create a private /dev/kvm node"
fi
echo 'L /dev/serial/by-id/usb-FakeVendor_FakeBoard_0001-if00-port0 - - - - /dev/ttyFAKE0' \
    > "$W/root/etc/tmpfiles.d/e2e-board.conf"
/usr/bin/python3 "$HERE/fake_board.py" "$W/ttyFAKE0" "$W/board.log" dialout >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [ -L "$W/ttyFAKE0" ] && break; sleep 0.1; done
[ -L "$W/ttyFAKE0" ] || die "the fake board did not start"
PTS=$(readlink -f "$W/ttyFAKE0")

(
    while :; do
        rc=0
        systemd-nspawn --quiet --register=no --keep-unit --console=read-only -b -D "$W/root" -M "$M" \
            --bind="$W/devs/kvm:/dev/kvm" --bind="$PTS:/dev/ttyFAKE0" \
            </dev/null >>"$W/console.log" 2>&1 || rc=$?
        if [ $rc -ne 133 ] || [ -e "$W/stop" ]; then break; fi
    done
) &
LOOP=$!
state=""
for _ in $(seq 1 300); do
    l=$(leader 2>/dev/null || true)
    if [ -n "$l" ]; then
        state=$(nsenter -t "$l" -a systemctl is-system-running 2>/dev/null || true)
        case "$state" in running|degraded) break ;; esac
    fi
    kill -0 "$LOOP" 2>/dev/null || break
    sleep 0.2
done
case "$state" in running|degraded) ;; *) tail -n 30 "$W/console.log"; die "the container did not boot: \`$state\`" ;; esac
LEADER=$(leader)
log "guest booted ($state), leader pid $LEADER; emulator at $URL"

# --- inventory and variables -----------------------------------------------------------------------
cat >"$W/inventory.yml" <<EOF
runner_hosts:
  hosts:
    $HOST:
      ansible_connection: community.docker.nsenter
      ansible_nsenter_pid: $LEADER
      ansible_python_interpreter: /usr/bin/python3
      # nsenter runs as root already; the guest has no sudo.
      ansible_become: false
EOF
(umask 077; cat >"$W/vars.yml" <<EOF
runner_agent_package_file: $DEB
runner_agent_github_server: $URL
runner_agent_scope: repo
runner_agent_scope_name: octo/lab
runner_agent_api_url: $API_URL
runner_agent_credentials: pat
runner_agent_pat: $PAT
runner_agent_host:
  kvm: true
runner_agent_defaults:
  user: runner
  labels: [lab, e2e]
runner_agent_runners:
  - name_template: "{hostname}-kvm-{index}"
    count: 2
    labels: [kvm]
  - name: e2e-board
    board: fake-a
runner_agent_boards:
  - name: fake-a
    arch: aarch64
    labels: [fake]
    console:
      path: /dev/serial/by-id/usb-FakeVendor_FakeBoard_0001-if00-port0
      baud: 115200
EOF
)

# play NAME [ansible-playbook args...]: runs the example playbook, output in $W/NAME.log; prints the
# exit status
play() {
    local name=$1; shift
    local t=$SECONDS rc=0
    ANSIBLE_HOME="$W/ansible-home" ANSIBLE_LOCAL_TEMP="$W/ansible-tmp" ANSIBLE_NOCOLOR=1 \
        ANSIBLE_RETRY_FILES_ENABLED=false ANSIBLE_STDOUT_CALLBACK=default \
        ansible-playbook -i "$W/inventory.yml" "$ROLE_DIR/playbook.yml" -e "@$W/vars.yml" "$@" \
        >"$W/$name.log" 2>&1 || rc=$?
    log "ansible-playbook ($name): exit $rc in $((SECONDS - t)) s: $(recap "$name")" >&2
    echo "$rc"
}
# recap NAME: the PLAY RECAP line of the guest
recap() { sed -n "s/^$HOST *: *//p" "$W/$1.log" | tr -s ' '; }
# count NAME FIELD: ok, changed, failed, ... from the PLAY RECAP
count() { recap "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
show_log() { tail -n "${2:-25}" "$W/$1.log" | sed 's/^/        | /'; }
main_pid() { in_guest systemctl show -p MainPID --value runner-agent.service 2>&1; }
# reloads: how often systemd reloaded the agent (SIGHUP through ExecReload)
reloads() { in_guest journalctl -q -u runner-agent.service 2>/dev/null | grep -c 'Reloading'; }
toml_sum() { in_guest sha256sum /etc/runner-agent/agent.toml 2>&1; }
# pickups: how often the agent said it read a rotated secret from its LoadCredential= source
pickups() { in_guest journalctl -q -u runner-agent.service 2>/dev/null | grep -c 'picked up the rotated secret'; }
# pickup_time: when it last said so (seconds since the epoch)
pickup_time() { in_guest journalctl -q -o short-unix -u runner-agent.service 2>/dev/null | grep 'picked up the rotated secret' | tail -n 1 | cut -d' ' -f1; }
# later A B: A > B (seconds, fractional)
later() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
# closed_after T: the daemon wrote its state after T, and GitHub's circuit is closed in it (a bad
# token opens it on the runner list of the pass that follows a secret change)
closed_after() {
    later "$(in_guest stat -c %.6Y /var/lib/runner-agent/daemon/state.json 2>/dev/null)" "$1" || return 1
    in_guest cat /var/lib/runner-agent/daemon/state.json \
        | /usr/bin/python3 -c 'import json, sys; sys.exit(json.load(sys.stdin).get("github_circuit") is not None)'
}
# within SECS COMMAND...: COMMAND succeeds within SECS seconds (polled every 0.2 s)
within() { local i; for i in $(seq 1 $(( $1 * 5 ))); do "${@:2}" >/dev/null 2>&1 && return 0; sleep 0.2; done; "${@:2}"; }

# --- 0. check mode on a fresh host: says it would install, changes nothing -------------------------
rc=$(play fresh-check --check --diff)
expect "check mode on a fresh host: ansible-playbook exits 0" 0 "$rc"
[ "$rc" = 0 ] || show_log fresh-check 40
check "check mode on a fresh host: reports the package as a change" test "$(count fresh-check changed)" -gt 0
check "check mode on a fresh host: the package is not installed" bash -c "! nsenter -t $LEADER -a test -e /usr/bin/agentctl"
check "check mode on a fresh host: no package file, no /etc/runner-agent" \
    bash -c "! nsenter -t $LEADER -a test -e /var/cache/runner-agent-packages && ! nsenter -t $LEADER -a test -e /etc/runner-agent"

# --- 1. apply ----------------------------------------------------------------------------------------
rc=$(play apply)
expect "apply: ansible-playbook exits 0" 0 "$rc"
[ "$rc" = 0 ] || show_log apply 40
expect "apply: nothing failed" 0 "$(count apply failed)"
check "apply: it changed things" test "$(count apply changed)" -gt 0
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
expect "apply: the package is installed" "ii" "$(in_guest dpkg-query -W -f '${db:Status-Abbrev}' runner-agent 2>&1 | tr -d ' ')"
expect "apply: runner-agent.service is enabled" enabled "$(in_guest systemctl is-enabled runner-agent.service 2>&1)"
expect "apply: runner-agent.service is active" active "$(in_guest systemctl is-active runner-agent.service 2>&1)"
expect "apply: agent.toml owner and mode (as the package makes it)" "640 root:runner" "$(in_guest stat -c '%a %U:%G' /etc/runner-agent/agent.toml 2>&1)"
expect "apply: the PAT file owner and mode" "600 root:root" "$(in_guest stat -c '%a %U:%G' /etc/runner-agent/github-pat 2>&1)"
expect "apply: the PAT file holds the token" "$PAT" "$(in_guest cat /etc/runner-agent/github-pat 2>&1)"
check "apply: the drop-in hands the PAT to the service" \
    in_guest grep -qx 'LoadCredential=github-pat:/etc/runner-agent/github-pat' /etc/systemd/system/runner-agent.service.d/50-credentials.conf
check "apply: the running agent has the credential (/run/credentials)" \
    in_guest test -s /run/credentials/runner-agent.service/github-pat
resolved=$(in_guest agentctl config check --json 2>&1)
expect "apply: agent.toml resolves to the configured runners, scope and board" \
    "ra-e2e-ansible-kvm-1 ra-e2e-ansible-kvm-2 e2e-board|$URL/octo/lab|fake-a" \
    "$(/usr/bin/python3 -c 'import json, sys; c = json.load(sys.stdin); print(" ".join(r["name"] for r in c["runners"]) + "|" + c["github"]["url"].rstrip("/") + "|" + " ".join(b["name"] for b in c["boards"]))' <<<"$resolved" 2>&1)"
check "apply: the play showed doctor's summary" grep -q 'agentctl doctor: ' "$W/apply.log"
doctor=$(in_guest agentctl doctor --json 2>/dev/null)
expect "apply: doctor in the guest fails nothing" 0 \
    "$(/usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["summary"]["fail"])' <<<"$doctor" 2>&1)"
expect "apply: doctor's github checks pass against the emulator (token, scope, registration token)" "pass" \
    "$(/usr/bin/python3 -c 'import json, sys; f = [x["outcome"] for x in json.load(sys.stdin)["findings"] if x["family"] == "github"]; print("pass" if f and set(f) == {"pass"} else f)' <<<"$doctor" 2>&1)"
expect "apply: doctor opened the board's console as the runner user" "pass" \
    "$(/usr/bin/python3 -c 'import json, sys; f = [x["outcome"] for x in json.load(sys.stdin)["findings"] if x["id"] == "serial.open"]; print("pass" if f and set(f) == {"pass"} else f)' <<<"$doctor" 2>&1)"
pid1=$(main_pid)
sum1=$(toml_sum)
reloads1=$(reloads)

# --- 2. apply again: nothing changes -----------------------------------------------------------------
rc=$(play again)
expect "again: ansible-playbook exits 0" 0 "$rc"
[ "$rc" = 0 ] || show_log again 40
expect "again: changed=0" 0 "$(count again changed)"
expect "again: nothing failed" 0 "$(count again failed)"
expect "again: the agent was not restarted (same MainPID)" "$pid1" "$(main_pid)"
expect "again: the agent was not reloaded" "$reloads1" "$(reloads)"

# --- 3. check mode with another label: shows the change, makes none -----------------------------------
rc=$(play check --check --diff -e '{"runner_agent_defaults": {"user": "runner", "labels": ["lab", "e2e", "gpu"]}}')
expect "check mode: ansible-playbook exits 0" 0 "$rc"
[ "$rc" = 0 ] || show_log check 40
check "check mode: reports a change" test "$(count check changed)" -gt 0
check "check mode: the diff shows the old labels" grep -qF -- '-labels = ["lab", "e2e"]' "$W/check.log"
check "check mode: the diff shows the new labels" grep -qF -- '+labels = ["lab", "e2e", "gpu"]' "$W/check.log"
expect "check mode: agent.toml is unchanged" "$sum1" "$(toml_sum)"
expect "check mode: the agent was not restarted (same MainPID)" "$pid1" "$(main_pid)"
expect "check mode: the agent was not reloaded" "$reloads1" "$(reloads)"

# --- 4. a configuration agentctl refuses: the template's validate stops the play ----------------------
rc=$(play invalid -e '{"runner_agent_defaults": {"user": "runner", "labels": ["lab", "has space"]}}')
check "invalid config: the play fails" test "$rc" != 0
expect "invalid config: one host failed" 1 "$(count invalid failed)"
# shellcheck disable=SC2016 # backticks of agentctl's message
check "invalid config: the play shows agentctl's message" grep -q 'label `has space` contains whitespace' "$W/invalid.log"
expect "invalid config: agent.toml is unchanged" "$sum1" "$(toml_sum)"
expect "invalid config: the agent still runs (same MainPID)" "$pid1" "$(main_pid)"

# --- 5. a failing doctor check fails the play, with the check and its hint -------------------------------
rc=$(play doctor -e '{"runner_agent_doctor_args": ["--only", "kvm", "--user", "nobody"]}')
check "failing doctor check: the play fails" test "$rc" != 0
expect "failing doctor check: one host failed" 1 "$(count doctor failed)"
expect "failing doctor check: changed=0" 0 "$(count doctor changed)"
check "failing doctor check: the message names the check" grep -q 'fail kvm.open \[nobody\]' "$W/doctor.log"
check "failing doctor check: the message has its hint" grep -q 'hint: .*usermod -aG kvm nobody' "$W/doctor.log"
[ "$failed" -eq 0 ] || show_log doctor 15

# --- 6. apply the new label: agent.toml changes, the agent reloads it (SIGHUP), no restart -------------
rc=$(play change -e '{"runner_agent_defaults": {"user": "runner", "labels": ["lab", "e2e", "gpu"]}}')
expect "change: ansible-playbook exits 0" 0 "$rc"
[ "$rc" = 0 ] || show_log change 40
check "change: agent.toml has the new label" in_guest grep -qF 'labels = ["lab", "e2e", "gpu"]' /etc/runner-agent/agent.toml
expect "change: the agent was reloaded once" "$((reloads1 + 1))" "$(reloads)"
expect "change: the agent was not restarted (same MainPID)" "$pid1" "$(main_pid)"
expect "change: runner-agent.service is active" active "$(in_guest systemctl is-active runner-agent.service 2>&1)"

# --- 7. the PAT rotated on GitHub: the new one replaces the file, the agent picks it up, no restart --
# systemd copies a LoadCredential= file only when the service starts: the agent watches the source
# its unit names and reads the new token from there.
picked0=$(pickups)
NEW_PAT=$(curl -fsS -X POST "$URL/_emulator/tokens/rotate" -d "{\"token\": \"$PAT\"}" \
    | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])' 2>/dev/null)
# In a file, as a vault would hand it over: never a token in argv.
(umask 077; printf 'runner_agent_pat: %s\nrunner_agent_defaults: {user: runner, labels: [lab, e2e, gpu]}\n' "$NEW_PAT" >"$W/rotate.yml")
rc=$(play rotate -e "@$W/rotate.yml")
expect "rotated PAT: ansible-playbook exits 0 (doctor's github checks pass with the new token)" 0 "$rc"
[ "$rc" = 0 ] || show_log rotate 40
expect "rotated PAT: the file holds the new token" "$NEW_PAT" "$(in_guest cat /etc/runner-agent/github-pat 2>&1)"
expect "rotated PAT: the agent was not restarted (same MainPID)" "$pid1" "$(main_pid)"
expect "rotated PAT: runner-agent.service is active" active "$(in_guest systemctl is-active runner-agent.service 2>&1)"
check "rotated PAT: the agent picked up the new token (log: picked up the rotated secret)" \
    test "$(pickups)" -gt "$picked0"
t_file=$(in_guest stat -c %.6Y /etc/runner-agent/github-pat 2>/dev/null)
t_pick=$(pickup_time)
check "rotated PAT: picked up within 2 s of the file's change (file ${t_file:-?}, log ${t_pick:-?})" \
    later "$t_file" "$(awk -v t="${t_pick:-0}" 'BEGIN { printf "%.6f", t - 2 }')"
check "rotated PAT: the pass after the pickup reached GitHub with the new token (no open circuit)" \
    within 10 closed_after "${t_pick:-0}"
check "rotated PAT: the credential copy is still the one from the start (the source was read)" \
    bash -c "! nsenter -t $(leader) -a cmp -s /run/credentials/runner-agent.service/github-pat /etc/runner-agent/github-pat"

no_pat() { [ -n "$NEW_PAT" ] && ! grep -qF -e "$PAT" -e "$NEW_PAT" "$W"/fresh-check.log "$W"/apply.log "$W"/again.log "$W"/check.log "$W"/invalid.log "$W"/doctor.log "$W"/change.log "$W"/rotate.log; }
check "neither PAT appears in any output of ansible-playbook (no_log)" no_pat

log "done"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
