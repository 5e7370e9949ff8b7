"""The first hour of a new user, as real processes: the bootstrap prints every address it listens on (in a
network namespace with two interfaces) and keeps its key out of the working directory; failed commands leave
no files behind; piped output keeps ids and multiaddrs whole on one line; ``versions show`` is readable;
``peer status`` without a server says what to do; the demo tags although configs/tiny.toml releases rarely."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from p2pmodel.node.launch import LocalSwarm, PeerProcess, cli_argv
from p2pmodel.testing.swarm import FAST, TINY

pytestmark = [pytest.mark.swarm, pytest.mark.scenario]  # make test-scenarios (CI runs it after make test)

MADDR = re.compile(r"/ip4/[0-9.]+/tcp/\d+/p2p/Qm[1-9A-HJ-NP-Za-km-z]{44}")
QUICK = [o for o in FAST if not o.startswith("versioning.")]  # the demo has to bring its own release_every


def cli(*args: str, timeout_s: float = 120, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "80"}  # piped, 80 columns: nothing may be cut
    return subprocess.run([*cli_argv(), *args], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    return lines[0]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_interface_netns():
    """A network namespace whose default route leaves through one interface, with a second one next to it
    (libp2p announces only the default route's interface for 0.0.0.0). Deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = f"p2pm-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot create a network namespace: {e}")
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "lan0")
        for dev, addr in (("up0", "10.201.0.1/24"), ("lan0", "10.202.0.1/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "route", "add", "default", "via", "10.201.0.254", "dev", "up0")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.mark.timeout(120)
def test_bootstrap_on_0000_prints_every_interface_address_and_keeps_its_key_under_runs(tmp_path, two_interface_netns):
    argv = ["ip", "netns", "exec", two_interface_netns, *cli_argv(), "bootstrap"]
    argv += ["--host-maddrs", "/ip4/0.0.0.0/tcp/0", "--json"]
    boot = subprocess.Popen(  # cwd: a fresh directory, where a default key must not land
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        line = boot.stdout.readline()
        assert line, boot.stderr.read() if boot.poll() is not None else "no output"
        out = json.loads(line)
    finally:
        if boot.poll() is None:
            os.killpg(boot.pid, signal.SIGTERM)
        try:
            boot.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(boot.pid, signal.SIGKILL)
            boot.wait(10)
        err = boot.stderr.read()
    hosts = {m.split("/")[2] for m in out["maddrs"]}
    assert {"10.201.0.1", "10.202.0.1", "127.0.0.1"} <= hosts, out
    assert all(m.endswith(f"/p2p/{out['peer_id']}") for m in out["maddrs"]), out
    assert not out["maddrs"][0].startswith("/ip4/127."), "routable addresses come first"
    assert "--announce-maddrs" in err, err
    assert (tmp_path / "runs" / "bootstrap" / "identity.key").is_file()
    assert not (tmp_path / "bootstrap.key").exists()


@pytest.mark.timeout(60)
def test_malformed_initial_peer_exits_2_and_creates_nothing(tmp_path):
    data = tmp_path / "d"
    res = cli("peer", "run", "--config", str(TINY), "--data-dir", str(data), "--initial-peers", "/ip4/1.2.3.4/tcp/x")
    assert res.returncode == 2 and "/ip4/1.2.3.4/tcp/x" in one_error_line(res)
    assert not data.exists(), sorted(p.name for p in data.rglob("*"))


@pytest.mark.timeout(60)
def test_peer_status_without_a_server_says_how_to_start_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    res = cli("peer", "status", "--url", f"http://127.0.0.1:{port}")
    assert res.returncode == 1
    url = f"http://127.0.0.1:{port}"
    assert one_error_line(res) == f"error: no peer answers at {url}: start the peer with --status-port {port}"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two training peers (v0.1.0 tagged at round 2), the first with its status server, behind a bootstrap;
    the commands the tests below read, run side by side once (each light client mostly waits on the DHT)."""
    root = tmp_path_factory.mktemp("pair")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with LocalSwarm(root, TINY, FAST) as sw:
        maddr = sw.start_bootstrap()
        peers = [
            sw.start_peer("p1", max_rounds=300, extra=[f"observability.status_port={port}"]),
            sw.start_peer("p2", max_rounds=300),
        ]
        deadline = time.monotonic() + 180
        for p in peers:
            while "tagged v0.1.0" not in p.log_path.read_text(errors="replace"):
                assert p.proc.poll() is None and time.monotonic() < deadline, p.stderr_tail()
                time.sleep(0.3)
        for _ in range(20):  # the tag index is published right after the tag
            listed = cli("versions", "list", "--initial-peers", maddr, "--json")
            if listed.returncode == 0 and json.loads(listed.stdout)["versions"]:
                break
            time.sleep(1)
        join = ("--initial-peers", maddr)
        commands = {
            "peers": ("swarm", "peers", *join),
            "peers_json": ("swarm", "peers", *join, "--json"),
            "show": ("versions", "show", "v0.1.0", *join),
            "show_json": ("versions", "show", "v0.1.0", *join, "--json"),
            "pull_unknown": ("versions", "pull", "v9.9.9", *join, "-o", str(root / "new" / "v9")),
            "pull": ("versions", "pull", "v0.1.0", *join, "-o", str(root / "made" / "v0.1.0"), "--json"),
        }
        with ThreadPoolExecutor(3) as pool:  # 2 cores: more at once only slows each one down
            futures = {name: pool.submit(cli, *args, timeout_s=240) for name, args in commands.items()}
            deadline = time.monotonic() + 60
            while True:  # a peer refreshes its list of the others at most every 30 s
                status = cli("peer", "status", "--url", f"http://127.0.0.1:{port}", "--json")
                if status.returncode or json.loads(status.stdout).get("other_peers_online") == 1:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(2)
            answers = {name: f.result() for name, f in futures.items()}
        yield SimpleNamespace(root=root, trainers=peers, status=status, **answers)


def _peer_id(peer: PeerProcess) -> str:
    return peer.rounds()[0]["peer_id"]


@pytest.mark.timeout(600)  # includes the module's swarm and its commands (~1-3 min on 2 busy cores)
def test_piped_swarm_peers_keeps_ids_and_addresses_whole(pair):
    res = pair.peers
    assert res.returncode == 0, res.stderr[-2000:]
    for p in pair.trainers:
        assert any(_peer_id(p) in line for line in res.stdout.splitlines()), res.stdout
    assert MADDR.search(res.stdout), res.stdout  # a whole multiaddr on one line (no "…", no wrap)
    assert "…" not in res.stdout


@pytest.mark.timeout(60)
def test_status_and_swarm_peers_count_the_same_peers(pair):
    assert pair.status.returncode == 0 and pair.peers_json.returncode == 0, pair.status.stderr + pair.peers_json.stderr
    st, online = json.loads(pair.status.stdout), json.loads(pair.peers_json.stdout)["peers"]
    assert st["peers_online"] == len(online) == 2 and st["other_peers_online"] == 1, (st, online)


@pytest.mark.timeout(60)
def test_versions_show_reads_like_a_certificate_and_json_stays(pair):
    human, raw = pair.show, pair.show_json
    assert human.returncode == 0 and raw.returncode == 0, human.stderr + raw.stderr
    cert = json.loads(raw.stdout)
    assert not human.stdout.lstrip().startswith("{")
    assert f"digest     {cert['digest']}" in human.stdout
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    for p in pair.trainers:  # both voted (a quorum of 2 needs both)
        assert re.search(rf"✓ {_peer_id(p)}  accept  {when}", human.stdout), human.stdout
    assert re.search(rf"tagged +{when}", human.stdout), human.stdout


@pytest.mark.timeout(60)
def test_pull_of_an_unknown_version_leaves_no_directory(pair):
    res, ok = pair.pull_unknown, pair.pull
    assert res.returncode == 1 and "unknown version v9.9.9" in one_error_line(res)
    assert not (pair.root / "new").exists()
    assert ok.returncode == 0 and (pair.root / "made" / "v0.1.0" / "manifest.json").is_file(), ok.stderr[-2000:]


@pytest.mark.timeout(300)
def test_piped_demo_prints_whole_lines_and_tags_with_its_own_release_every(tmp_path):
    sets = [a for o in QUICK for a in ("--set", o)]
    res = cli("demo", "--peers", "2", "--rounds", "2", "--workdir", str(tmp_path), *sets, timeout_s=280)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"^bootstrap: " + MADDR.pattern + "$", res.stderr, re.M), res.stderr[:500]
    assert re.search(r"^└─+┴.*┘$", res.stderr, re.M), res.stderr  # the table ends its own line
    lines = res.stdout.splitlines()
    assert "2 peers, one state digest" in lines, res.stdout
    assert any(line.startswith("│ v0.1.0 ") for line in lines), res.stdout  # release_every=2 from the demo itself
