"""An HTTPS proxy (the standard HTTPS_PROXY kind: CONNECT host:443) that
stands in for chosen internet hosts with canned documents, under
certificates from a CA of its own, and refuses every other destination.
It records each request it was asked to carry."""
import http.server
import socketserver
import ssl
import threading
from pathlib import Path

import harness


def _certificates(dirpath, hosts):
    """A CA, and for each host a certificate and key; returns the CA's path
    and {host: (cert path, key path)}."""
    ca = harness.test_ca("Veil test stand-in CA", days=7)
    d = Path(dirpath)
    ca_path = harness.write_pem(d / "standin-ca.pem", cert=ca[0])
    out = {}
    for i, host in enumerate(hosts):
        cert, key = harness.server_cert(ca, host, [host], days=7)
        out[host] = (harness.write_pem(d / f"standin-{i}.pem", cert=cert), harness.write_pem(d / f"standin-{i}-key.pem", key=key))
    return ca_path, out


class StandInProxy:
    """`sites` maps a host name to {path: (content type, body)}. `ca` is the
    CA the client must trust for those hosts, `url` the proxy's address;
    `requests` lists every request line the proxy received (CONNECT targets
    included) and `served` every (host, method, path) it answered as a site."""

    def __init__(self, dirpath, sites):
        self.sites = sites
        self.requests, self.served = [], []
        self.ca, certs = _certificates(dirpath, list(sites))
        self.contexts = {}
        for host, (cert, key) in certs.items():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.contexts[host] = ctx
        proxy = self

        class Site(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                host = self.server_host
                proxy.served.append((host, "GET", self.path))
                found = proxy.sites[host].get(self.path)
                status, (ctype, body) = (200, found) if found else (404, ("text/plain", b"not stood in for\n"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Connect(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline(65536).decode("latin-1").strip()
                while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                proxy.requests.append(line)
                method, target = (line.split(" ") + ["", ""])[:2]
                host, _, port = target.rpartition(":")
                if method == "CONNECT" and port == "443" and host in proxy.contexts:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    tls = proxy.contexts[host].wrap_socket(self.connection, server_side=True)
                    site = type("SiteFor", (Site,), {"server_host": host})
                    site(tls, self.client_address, self.server)
                    return
                self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Connect)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
