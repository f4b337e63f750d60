#!/bin/bash
# safe_sleep.sh of the fake actions/runner release: sleep N seconds, with or without `sleep`.

if [ -x "$(command -v sleep)" ]; then
    sleep "$1"
    exit 0
fi
SECONDS=0
while [[ $SECONDS != $1 ]]; do
    :
done
