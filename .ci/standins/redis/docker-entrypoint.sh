#!/bin/sh
# Like the official redis image's entrypoint: drops to the redis user in /data,
# and protected mode is off (the official build patches it off) so that other
# containers on the compose network can connect.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
    set -- "$@" --protected-mode no
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' +
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
