"""One peer per --data-dir (a flock naming the holder's pid), and a busy fixed p2p port found before p2pd starts
(p2pd binds with SO_REUSEPORT, so it would share the port instead of failing)."""

import os
import socket
import subprocess
import sys

import pytest

from p2pmodel.core.datadir_lock import LOCK_NAME, lock_data_dir
from p2pmodel.core.errors import UsageError
from p2pmodel.swarm.node import check_ports_free

SECOND = """
import sys
from p2pmodel.core.datadir_lock import lock_data_dir
from p2pmodel.core.errors import UsageError
try:
    lock_data_dir(sys.argv[1])
except UsageError as e:
    print(e)
    sys.exit(2)
"""


@pytest.mark.swarm
@pytest.mark.timeout(60)
def test_second_process_on_a_locked_data_dir_is_refused_with_the_holders_pid(tmp_path):
    lock_data_dir(tmp_path)
    assert lock_data_dir(tmp_path) == tmp_path.resolve() / LOCK_NAME  # the holder may ask again
    out = subprocess.run([sys.executable, "-c", SECOND, str(tmp_path)], capture_output=True, text=True, timeout=50)
    assert out.returncode == 2, out.stderr
    assert f"in use by another peer (pid {os.getpid()})" in out.stdout and str(tmp_path) in out.stdout


def _listener(reuseport: bool) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:  # like p2pd
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("reuseport", [False, True])
def test_a_port_with_a_listener_is_in_use(reuseport):
    with _listener(reuseport) as busy:
        port = busy.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(UsageError, match=f"port {port} already in use"):
                check_ports_free([f"/ip4/{host}/tcp/{port}"], "swarm.host_maddrs")
        check_ports_free(["/ip4/127.0.0.1/tcp/0", f"/ip4/127.0.0.1/udp/{port}/quic"])  # nothing fixed on TCP


def test_time_wait_of_a_previous_run_is_no_conflict():
    listener = _listener(False)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the side that closes first keeps 127.0.0.1:port in TIME_WAIT
    client.close()
    listener.close()
    check_ports_free([f"/ip4/127.0.0.1/tcp/{port}"])  # a restarted peer on its fixed port must not be refused
