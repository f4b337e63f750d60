#!/bin/bash
# run.sh of the fake actions/runner release: keeps run-helper.sh running while it asks for a
# restart (exit 2), as the real one does.

SOURCE="${BASH_SOURCE[0]}"
while [ -h "$SOURCE" ]; do
    DIR="$(cd -P "$(dirname "$SOURCE")" && pwd)"
    SOURCE="$(readlink "$SOURCE")"
    [[ $SOURCE != /* ]] && SOURCE="$DIR/$SOURCE"
done
DIR="$(cd -P "$(dirname "$SOURCE")" && pwd)"

run() {
    while :; do
        cp -f "$DIR"/run-helper.sh.template "$DIR"/run-helper.sh
        "$DIR"/run-helper.sh $*
        returnCode=$?
        if [[ $returnCode -eq 2 ]]; then
            echo "Restarting runner..."
        else
            echo "Exiting runner..."
            if [[ "$ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE" == "1" && $returnCode -eq 7 ]]; then
                exit 7
            fi
            exit 0
        fi
    done
}

runWithManualTrap() {
    set -m
    signaled=0
    _trap() {
        kill -INT -"$PID"
        signaled=1
    }
    trap '_trap' INT TERM
    while :; do
        cp -f "$DIR"/run-helper.sh.template "$DIR"/run-helper.sh
        "$DIR"/run-helper.sh $* &
        PID=$!
        wait $PID
        returnCode=$?
        if [ $signaled -eq 1 ]; then
            wait $PID
            returnCode=$?
        fi
        if [[ $returnCode -eq 2 ]]; then
            echo "Restarting runner..."
        else
            echo "Exiting runner..."
            trap - INT TERM
            wait $PID
            exit $returnCode
        fi
    done
}

updateCerts() {
    local sudo_prefix=""
    if [ "$(id -u)" -ne 0 ]; then
        if [[ ! -x "$(command -v sudo)" ]]; then
            echo "Warning: failed to update certificate store: sudo is required but not found"
            return 1
        fi
        sudo_prefix="sudo"
    fi
    if [[ -x "$(command -v update-ca-certificates)" ]]; then
        $sudo_prefix update-ca-certificates
    elif [[ -x "$(command -v update-ca-trust)" ]]; then
        $sudo_prefix update-ca-trust
    else
        echo "Warning: failed to update certificate store: update-ca-certificates or update-ca-trust not found. This can happen if you're using a different runner base image."
        return 1
    fi
}

if [[ -n "$RUNNER_UPDATE_CA_CERTS" ]]; then
    updateCerts
fi

if [[ -z "$RUNNER_MANUALLY_TRAP_SIG" ]]; then
    run $*
else
    runWithManualTrap $*
fi
