#!/bin/bash
# env.sh of the fake actions/runner release (sourced by config.sh from the runner root):
# records PATH in .path and appends selected variables to .env when set and not yet there.

vars_to_keep=(
    'LANG'
    'JAVA_HOME'
    'ANT_HOME'
    'M2_HOME'
    'ANDROID_HOME'
    'ANDROID_SDK_ROOT'
    'GRADLE_HOME'
    'NVM_BIN'
    'NVM_PATH'
    'LD_LIBRARY_PATH'
    'PERL5LIB'
)

env_text=""
if [ -f ".env" ]; then
    env_text=$(cat .env)
else
    touch .env
fi

keep_var() {
    local name="$1"
    if test "${env_text#*${name}=}" = "$env_text"; then
        if [ -n "${!name}" ]; then
            echo "${name}=${!name}" >>.env
        fi
    fi
}

echo "$PATH" >.path

for var_name in "${vars_to_keep[@]}"; do
    keep_var "$var_name"
done
