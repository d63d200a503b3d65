#!/bin/sh
# Replace the app replicas one at a time, so the others keep serving: after
# `docker compose build` (or `pull`) this is also the upgrade. Give it the same
# options as `up`, e.g.
#   deploy/rolling-restart.sh -f compose.yaml -f deploy/compose.scale.yaml --profile scale
# For each running replica: start one new replica from the current image, wait
# until its HEALTHCHECK is healthy (GET /healthz: Redis and pub/sub both ready),
# then stop the old one. `docker stop` sends SIGTERM: its WebSockets close with
# 1012 and the browsers reconnect through the proxy to the others at once.
# Needs the scale setup: with a published host port a second replica cannot start.
set -eu

wait_seconds=${ROLLING_RESTART_WAIT:-120}
old=$(docker compose "$@" ps -q app)
count=$(echo "$old" | wc -w)
[ "$count" -gt 0 ] || { echo "rolling-restart: no app replica is running" >&2; exit 1; }

for replica in $old; do
    before=$(docker compose "$@" ps -q app)
    docker compose "$@" up -d --no-deps --no-recreate --scale app=$((count + 1)) app
    new=
    for id in $(docker compose "$@" ps -q app); do
        case " $(echo $before) " in *" $id "*) ;; *) new=$id ;; esac
    done
    [ -n "$new" ] || { echo "rolling-restart: no new replica was started" >&2; exit 1; }
    waited=0
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$new")" = healthy ]; do
        if [ "$waited" -ge "$wait_seconds" ]; then
            echo "rolling-restart: $new is not healthy after $wait_seconds s; $replica keeps running" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    docker stop "$replica" >/dev/null
    docker rm "$replica" >/dev/null
    echo "rolling-restart: replaced $(echo "$replica" | cut -c1-12) by $(echo "$new" | cut -c1-12) (healthy after $waited s)"
done
