"""Run a command offline: in a network namespace of its own (`unshare -rn`),
where the loopback interface is the only one and the only listeners are
relays to chosen TCP ports of the host's loopback (through Unix sockets,
which the namespace does not separate). Nothing else the command tries to
reach exists for it.

Inside the namespace: `python3 netjail.py SOCKDIR PORT[,PORT…] -- CMD…`
(what `jailed()` builds); the host side of each relay is `Relays`.
"""
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path


def pipe(a, b):
    """Copy both ways between two connected sockets until both sides end."""
    def one_way(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
    t = threading.Thread(target=one_way, args=(b, a), daemon=True)
    t.start()
    one_way(a, b)
    t.join()
    a.close()
    b.close()


def serve(listener, connect):
    """Accept on `listener` for ever, relaying each connection to `connect()`."""
    def relay(conn):
        try:
            other = connect()
        except OSError:
            conn.close()
            return
        pipe(conn, other)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=relay, args=(conn,), daemon=True).start()


class Relays:
    """The host side: for each port, a Unix socket in `sockdir` relayed to
    127.0.0.1:port."""

    def __init__(self, sockdir, ports):
        self.sockdir, self.ports, self.listeners = Path(sockdir), list(ports), []
        for port in self.ports:
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(self.sockdir / f"{port}.sock"))
            s.listen(64)
            self.listeners.append(s)
            threading.Thread(target=serve, args=(s, lambda port=port: socket.create_connection(("127.0.0.1", port))), daemon=True).start()

    def command(self, cmd):
        """`cmd` run in a namespace that reaches only these ports."""
        return ["unshare", "-rn", sys.executable, str(Path(__file__).resolve()), str(self.sockdir),
                ",".join(map(str, self.ports)), "--", *cmd]

    def close(self):
        for s in self.listeners:
            s.close()


def main():
    sockdir, ports, sep, *cmd = sys.argv[1:]
    assert sep == "--" and cmd, "usage: netjail.py SOCKDIR PORT[,PORT…] -- CMD…"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for port in map(int, ports.split(",")):
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen(64)

        def connect(port=port):
            u = socket.socket(socket.AF_UNIX)
            u.connect(os.path.join(sockdir, f"{port}.sock"))
            return u
        threading.Thread(target=serve, args=(s, connect), daemon=True).start()
    # The command inherits stdin and stdout (an MCP server's stdio transport).
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
