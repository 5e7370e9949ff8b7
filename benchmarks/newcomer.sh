#!/usr/bin/env bash
# The README's Quickstart and "Join a swarm" as a newcomer runs them, on one machine, as root:
#   1. git clone of this repository into a temp dir, `make install` there (or NEWCOMER_VENV=/path/to/.venv
#      to reuse an installed venv: its p2pmodel then imports the clone's code through PYTHONPATH);
#   2. Quickstart: `make demo` (DEMO="PEERS=2 ROUNDS=2" by default; DEMO="" for the README's plain one);
#   3. Join a swarm: a bootstrap on 0.0.0.0; a peer in its own network namespace (a veth to the host,
#      10.231.<n>.0/24, nothing leaves this machine) joining through the bootstrap's non-loopback address
#      parsed from its --json output; one more peer on the host; rounds with versioning.release_every=2;
#   4. `swarm peers` and `versions list` (piped, as a script would read them) showing the two peers and tags.
# Everything started here is stopped by process group, and the namespace and veth removed (trap), also on
# failure or Ctrl-C. Exit status 0 only when v0.1.1 is listed. Usage: sudo benchmarks/newcomer.sh
set -euo pipefail

REPO="${REPO:-$(cd "$(dirname "$0")/.." && pwd)}"
DEMO="${DEMO-PEERS=2 ROUNDS=2}"
PORT="${BOOTSTRAP_PORT:-31337}"
TIMEOUT_S="${TIMEOUT_S:-600}"
N=$(( $$ % 200 + 20 ))
NS="p2pm-newcomer-$$"
HOST_IF="nch$$"
NS_IF="ncn$$"
HOST_IP="10.231.$N.1"
NS_IP="10.231.$N.2"
WORK="$(mktemp -d /tmp/p2pmodel-newcomer.XXXXXX)"
GROUPS_STARTED=()

say() { printf '\n== %s\n' "$*"; }
die() { printf 'newcomer.sh: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    # SIGTERM to each leader alone (a peer stops its DHT and p2pd itself), then SIGKILL what is left of its group
    for pgid in "${GROUPS_STARTED[@]}"; do kill -TERM "$pgid" 2>/dev/null || true; done
    for _ in $(seq 1 40); do
        local alive=0
        for pgid in "${GROUPS_STARTED[@]}"; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.5
    done
    for pgid in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    ip link del "$HOST_IF" 2>/dev/null || true
    if [ "$rc" != 0 ] && [ -d "$WORK/logs" ]; then
        for f in "$WORK"/logs/*.log; do printf '\n-- last lines of %s\n' "$f"; tail -n 15 "$f"; done
    fi
    [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run in its own session (its own process group), stdout to logs/NAME.out
start() {
    local name=$1
    shift
    setsid "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.log" </dev/null &
    GROUPS_STARTED+=("$!")
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
wait_for() {
    local deadline=$(( $(date +%s) + $1 )) what=$2
    shift 2
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what"
        sleep 1
    done
}

[ "$(id -u)" = 0 ] || die "run as root (it creates a network namespace)"
command -v ip >/dev/null || die "needs iproute2 (ip)"

say "clone $REPO"
git clone -q "$REPO" "$WORK/p2pmodel"
cd "$WORK/p2pmodel"
mkdir -p "$WORK/logs"
if [ -n "${NEWCOMER_VENV:-}" ]; then
    ln -s "$NEWCOMER_VENV" .venv
    export PYTHONPATH="$PWD"  # the venv's own p2pmodel may be installed from elsewhere: use the clone's
    MAKE_FLAGS=(-o .venv/.installed)  # installed already: make must not reinstall into a shared venv
    echo "reusing $NEWCOMER_VENV"
else
    say "make install"
    time make install
    MAKE_FLAGS=()
fi
P=(.venv/bin/p2pmodel)

say "Quickstart: make demo $DEMO"
# shellcheck disable=SC2086 # DEMO holds make variables
make -s "${MAKE_FLAGS[@]}" demo $DEMO

say "Join a swarm: a peer's own network namespace $NS ($NS_IP), veth to the host ($HOST_IP)"
ip netns add "$NS"
ip link add "$HOST_IF" type veth peer name "$NS_IF"
ip link set "$NS_IF" netns "$NS"
ip addr add "$HOST_IP/24" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NS" addr add "$NS_IP/24" dev "$NS_IF"
ip -n "$NS" link set "$NS_IF" up
ip -n "$NS" link set lo up
ip -n "$NS" route add default via "$HOST_IP"

if python3 -c "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0', int(sys.argv[1])))" "$PORT" 2>/dev/null; then
    :
else
    PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[1])")
    echo "port 31337 is taken here: the bootstrap uses $PORT"
fi

say "p2pmodel bootstrap --host-maddrs /ip4/0.0.0.0/tcp/$PORT --json"
start bootstrap "${P[@]}" bootstrap --host-maddrs "/ip4/0.0.0.0/tcp/$PORT" --json
wait_for 120 "the bootstrap's addresses" grep -q maddrs "$WORK/logs/bootstrap.out"
cat "$WORK/logs/bootstrap.out"
JOIN=$(python3 - "$WORK/logs/bootstrap.out" "$HOST_IP" <<'EOF'
import ipaddress, json, sys
maddrs = json.loads(open(sys.argv[1]).readline())["maddrs"]
routable = [m for m in maddrs if not ipaddress.ip_address(m.split("/")[2]).is_loopback]
on_veth = [m for m in routable if m.split("/")[2] == sys.argv[2]]
print((on_veth or routable)[0])
EOF
)
echo "joining through $JOIN"
[ -f runs/bootstrap/identity.key ] && echo "bootstrap key: runs/bootstrap/identity.key (git ignores it: $(git check-ignore runs/bootstrap/identity.key))"

PEER_ARGS=(peer run --config configs/tiny.toml --initial-peers "$JOIN" --set versioning.release_every=2 --json)
say "p2pmodel ${PEER_ARGS[*]}  (in $NS, and on the host)"
start ns-peer ip netns exec "$NS" "${P[@]}" "${PEER_ARGS[@]}" --data-dir runs/ns-peer
start host-peer "${P[@]}" "${PEER_ARGS[@]}" --data-dir runs/host-peer

tagged() { grep -q "tagged v0.1.1" "$WORK/logs/ns-peer.log" && grep -q "tagged v0.1.1" "$WORK/logs/host-peer.log"; }
wait_for "$TIMEOUT_S" "v0.1.1 tagged by both peers" tagged
for peer in ns-peer host-peer; do
    grep "listening on\|starts at round\|round [0-9]* committed\|tagged v" "$WORK/logs/$peer.log" | sed "s/^/[$peer] /"
    echo "[$peer] lines at WARNING or above: $(grep -c " [WEC] \|Traceback" "$WORK/logs/$peer.log" || true)"
done

say "p2pmodel swarm peers --initial-peers $JOIN | cat"
"${P[@]}" swarm peers --initial-peers "$JOIN" | cat
say "p2pmodel versions list --initial-peers $JOIN | cat"
LIST=""
for _ in 1 2 3; do  # the tag index is published right after the tag
    LIST=$("${P[@]}" versions list --initial-peers "$JOIN" | cat) && grep -q "v0.1.1" <<<"$LIST" && break
    sleep 2
done
echo "$LIST"
grep -q "v0.1.1" <<<"$LIST" || die "versions list does not show v0.1.1"
say "ok after $SECONDS s: a fresh clone ran the Quickstart and joined a swarm across a network namespace; v0.1.0 and v0.1.1 tagged"
