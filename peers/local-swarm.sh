#!/usr/bin/env bash
# Start a swarm by hand on this machine: one bootstrap node and N peers on 127.0.0.1, each its own process
# (and process group), logs in a directory; Ctrl-C (or SIGTERM) stops them all by PID.
#
#   peers/local-swarm.sh [N] [extra `p2pmodel peer run` args ...]
#   peers/local-swarm.sh 3 --max-rounds 6                # ends by itself once every peer committed round 6
#   peers/local-swarm.sh 2 --device cuda --log-format json
#
# Environment: P2PMODEL (the command; default .venv/bin/p2pmodel, else p2pmodel on PATH), CONFIG
# (configs/tiny.toml), WORKDIR (runs/local-swarm: identities, checkpoints, logs/), BOOTSTRAP_PORT (31337),
# PEER_BASE_PORT (31340: peer i listens on PEER_BASE_PORT+i-1), STATUS_BASE_PORT (8081: peer i serves
# http://127.0.0.1:STATUS_BASE_PORT+i-1/status; empty = no status endpoint). Rerunning with the same WORKDIR
# reuses the identities and resumes every peer from its last committed round.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${1:-3}"
[ $# -gt 0 ] && shift
case "$N" in '' | *[!0-9]*) echo "usage: $0 [N] [peer run args ...]" >&2; exit 2 ;; esac
if [ -z "${P2PMODEL:-}" ]; then
    if [ -x .venv/bin/p2pmodel ]; then P2PMODEL=.venv/bin/p2pmodel; else P2PMODEL=p2pmodel; fi
fi
CONFIG="${CONFIG:-configs/tiny.toml}"
WORKDIR="${WORKDIR:-runs/local-swarm}"
BOOTSTRAP_PORT="${BOOTSTRAP_PORT:-31337}"
PEER_BASE_PORT="${PEER_BASE_PORT:-31340}"
STATUS_BASE_PORT="${STATUS_BASE_PORT-8081}"
LOGS="$WORKDIR/logs"
mkdir -p "$LOGS"

pids=()       # every process started here; each leads its own process group (the peer and its p2pd)
peer_pids=()

stop_all() {
    trap - INT TERM EXIT
    [ ${#pids[@]} -eq 0 ] && return
    echo "stopping ${#pids[@]} process(es): ${pids[*]}" >&2
    # TERM to each main process (it stops its own p2pd cleanly); after the grace period, KILL each whole group.
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 30); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.5
    done
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# setsid: each process gets its own group, so Ctrl-C reaches only this script, which then stops everything in
# order, and a leftover p2pd child can be killed with its group.
rm -f "$WORKDIR/bootstrap.json"
setsid "$P2PMODEL" bootstrap --host-maddrs "/ip4/127.0.0.1/tcp/$BOOTSTRAP_PORT" \
    --identity "$WORKDIR/bootstrap.key" --json >"$WORKDIR/bootstrap.json" 2>"$LOGS/bootstrap.log" &
pids+=($!)

peer_id=""
for _ in $(seq 1 120); do
    peer_id=$(sed -n 's/.*"peer_id": *"\([^"]*\)".*/\1/p' "$WORKDIR/bootstrap.json")
    [ -n "$peer_id" ] && break
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "error: the bootstrap node exited; see $LOGS/bootstrap.log:" >&2
        tail -n 20 "$LOGS/bootstrap.log" >&2
        exit 1
    fi
    sleep 0.5
done
[ -n "$peer_id" ] || { echo "error: no bootstrap address after 60 s; see $LOGS/bootstrap.log" >&2; exit 1; }
MADDR="/ip4/127.0.0.1/tcp/$BOOTSTRAP_PORT/p2p/$peer_id"
echo "bootstrap: $MADDR" >&2

for i in $(seq 1 "$N"); do
    dir="$WORKDIR/peer$i"
    mkdir -p "$dir"
    args=(peer run --config "$CONFIG" --initial-peers "$MADDR" --data-dir "$dir" --identity "$dir/identity.key"
        --set "swarm.host_maddrs=[\"/ip4/127.0.0.1/tcp/$((PEER_BASE_PORT + i - 1))\"]" --json)
    if [ -n "$STATUS_BASE_PORT" ]; then
        args+=(--status-port "$((STATUS_BASE_PORT + i - 1))")
    fi
    setsid "$P2PMODEL" "${args[@]}" "$@" >"$LOGS/peer$i.jsonl" 2>"$LOGS/peer$i.log" &
    pids+=($!)
    peer_pids+=($!)
    echo "peer$i: pid $!, rounds in $LOGS/peer$i.jsonl, log in $LOGS/peer$i.log" >&2
done
echo "running; join from this machine with --initial-peers $MADDR; Ctrl-C stops the swarm" >&2

status=0
for pid in "${peer_pids[@]}"; do
    wait "$pid" || status=$?
done
exit "$status"
