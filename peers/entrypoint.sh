#!/bin/sh
# Entrypoint of the docker compose swarm (peers/docker-compose.yml), installed in the image as
# /usr/local/bin/p2pmodel-compose-entrypoint. It runs `p2pmodel "$@"` and adds one thing per role, so that a
# service's `command:` stays a plain p2pmodel command line (tests/unit/test_compose.py checks it against the CLI):
#   p2pmodel bootstrap ... : --json, with stdout ({"peer_id", "maddrs"}) written to $BOOTSTRAP_FILE on a volume
#                            the other services mount; logs stay on stderr (docker compose logs).
#   p2pmodel peer run ...  : waits (up to $BOOTSTRAP_WAIT_S) for $BOOTSTRAP_FILE, then adds
#                            --initial-peers /dns4/$BOOTSTRAP_HOST/tcp/$BOOTSTRAP_PORT/p2p/<bootstrap peer_id>.
# Without BOOTSTRAP_FILE it is plain `p2pmodel "$@"`. The bootstrap's key lives on its /data volume, so its
# PeerID (and the address the peers join) survives restarts.
set -eu

if [ -z "${BOOTSTRAP_FILE:-}" ]; then
    exec p2pmodel "$@"
fi

case "${1:-} ${2:-}" in
"bootstrap "*)
    rm -f "$BOOTSTRAP_FILE"
    exec p2pmodel "$@" --json >"$BOOTSTRAP_FILE"
    ;;
"peer run")
    wait_s="${BOOTSTRAP_WAIT_S:-180}"
    waited=0
    until peer_id=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["peer_id"])' \
        "$BOOTSTRAP_FILE" 2>/dev/null); do
        if [ "$waited" -ge "$wait_s" ]; then
            echo "error: no bootstrap address in $BOOTSTRAP_FILE after ${wait_s}s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    maddr="/dns4/${BOOTSTRAP_HOST:-bootstrap}/tcp/${BOOTSTRAP_PORT:-31337}/p2p/${peer_id}"
    echo "joining the swarm through $maddr" >&2
    exec p2pmodel "$@" --initial-peers "$maddr"
    ;;
esac
exec p2pmodel "$@"
