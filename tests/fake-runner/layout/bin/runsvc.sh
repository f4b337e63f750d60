#!/bin/bash
# runsvc.sh of the fake actions/runner release: what the systemd unit runs. The real script
# starts node with bin/RunnerService.js; this release ships no node, so RunnerService.js's
# supervision is done here:
# - runs `bin/Runner.Listener run --startuptype service`, its output on stdout (the journal);
# - exit 0, 1, 5: stop; 2, 3, 4: relaunch after 5 s, giving up after 10 in a row; any other
#   code: relaunch every 5 s (forever, unless GITHUB_ACTIONS_SERVICE_EXIT_AFTER_N_FAILURES > 0);
# - the counters reset whenever the listener prints "Listening for Jobs";
# - SIGTERM/SIGINT: SIGINT to the listener, SIGKILL 30 s later if it is still there.
# Fake-only knob: FAKE_RUNNER_RETRY_DELAY_SECONDS (default 5) for the relaunch pause.

if [ -f ".path" ]; then
    PATH=$(cat .path)
    export PATH
    echo ".path=${PATH}"
fi

delay=${FAKE_RUNNER_RETRY_DELAY_SECONDS:-5}
exit_after=${GITHUB_ACTIONS_SERVICE_EXIT_AFTER_N_FAILURES:-0}
[[ $exit_after =~ ^[0-9]+$ ]] || exit_after=0

state_dir=$(mktemp -d)
listening_flag="$state_dir/listening"
killer_pid=""
trap 'rm -rf "$state_dir"; [ -n "$killer_pid" ] && kill -- -"$killer_pid" 2>/dev/null' EXIT

stopping=0
listener_pid=""
unknown_failures=0
retriable_failures=0

graceful_shutdown() {
    echo "Shutting down runner listener"
    stopping=1
    if [ -n "$listener_pid" ] && kill -0 "$listener_pid" 2>/dev/null; then
        echo "Sending SIGINT to runner listener to stop"
        kill -INT "$listener_pid" 2>/dev/null
        echo "Sending SIGKILL to runner listener"
        ( sleep 30; kill -KILL "$listener_pid" 2>/dev/null ) </dev/null >/dev/null 2>&1 &
        killer_pid=$!
    fi
}
trap graceful_shutdown TERM INT

watch_output() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s\n' "$line"
        case $line in
            *"Listening for Jobs"*) : >"$listening_flag" ;;
        esac
    done
}

# Job control: the listener then starts with SIGINT at its default disposition (a non-interactive
# shell would start background children with SIGINT ignored), as node's spawn does.
set -m

echo "Started running service"
while [ $stopping -eq 0 ]; do
    echo "Starting Runner listener with startup type: service"
    fifo="$state_dir/output"
    rm -f "$fifo"
    mkfifo "$fifo"
    watch_output <"$fifo" &
    watcher_pid=$!
    ./bin/Runner.Listener run --startuptype service >"$fifo" 2>&1 &
    listener_pid=$!
    echo "Started listener process, pid: ${listener_pid}"
    # `wait` returns early when a trapped signal arrives: wait again until the listener is gone.
    while :; do
        wait "$listener_pid"
        code=$?
        kill -0 "$listener_pid" 2>/dev/null || break
    done
    listener_pid=""
    # All of the listener's output has been seen once the watcher reaches end of file.
    while kill -0 "$watcher_pid" 2>/dev/null; do
        wait "$watcher_pid"
    done
    if [ -f "$listening_flag" ]; then
        rm -f "$listening_flag"
        unknown_failures=0
        retriable_failures=0
    fi
    echo "Runner listener exited with error code ${code}"
    case $code in
        0)
            echo "Runner listener exit with 0 return code, stop the service, no retry needed."
            stopping=1
            ;;
        1)
            echo "Runner listener exit with terminated error, stop the service, no retry needed."
            stopping=1
            ;;
        2 | 3 | 4)
            if [ "$code" -eq 2 ]; then
                echo "Runner listener exit with retryable error, re-launch runner in 5 seconds."
            else
                echo "Runner listener exit because of updating, re-launch runner in 5 seconds."
            fi
            unknown_failures=0
            retriable_failures=$((retriable_failures + 1))
            if [ $retriable_failures -ge 10 ]; then
                echo "Stopping the runner after 10 consecutive re-tryable failures" >&2
                stopping=1
            fi
            ;;
        5)
            echo "Runner listener exit with Session Conflict error, stop the service, no retry needed."
            stopping=1
            ;;
        *)
            unknown_failures=$((unknown_failures + 1))
            retriable_failures=0
            if [ "$exit_after" -gt 0 ] && [ $unknown_failures -ge "$exit_after" ]; then
                echo "Runner listener exit with undefined return code, exiting service after ${unknown_failures} consecutive failures" >&2
                stopping=1
            else
                echo "Runner listener exit with undefined return code, re-launch runner in 5 seconds."
            fi
            ;;
    esac
    if [ $stopping -eq 0 ]; then
        sleep "$delay" &
        wait $!
    fi
done
