"""An exposition target behind HTTPS, client certificates and basic auth,
for the scrape tests: its server certificate names only `exporter.test`
(so a scraper must set tls_config.server_name), it requires a client
certificate signed by the same CA, and /metrics answers 401 without the
right user and password. Writes ca.pem, client.pem and client-key.pem to
OUT_DIR.

usage: exposition_server.py PORT OUT_DIR USER PASSWORD
Prints "ready" once listening.
"""
import base64
import http.server
import os
import ssl
import sys

from cryptography.x509.oid import ExtendedKeyUsageOID

from test_ca import TestCa, write_pem

port, out_dir, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(out_dir, exist_ok=True)
ca = TestCa("vigil scrape test CA")
server_key, server_cert = ca.leaf("exporter.test", ExtendedKeyUsageOID.SERVER_AUTH, dns=["exporter.test"])
client_key, client_cert = ca.leaf("vigil scraper", ExtendedKeyUsageOID.CLIENT_AUTH)
write_pem(out_dir, "ca.pem", ca.cert)
write_pem(out_dir, "client.pem", client_cert)
write_pem(out_dir, "client-key.pem", client_key)
write_pem(out_dir, "server.pem", server_cert)
write_pem(out_dir, "server-key.pem", server_key)

BODY = (
    b"# TYPE http_requests_total counter\n"
    b'http_requests_total{code="200"} 10\n'
    b'http_requests_total{code="503"} 2\n'
    b"# TYPE go_goroutines gauge\n"
    b"go_goroutines 7\n"
    b'app_info{build_version="1.2"} 1\n'
)
EXPECTED = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != EXPECTED:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="metrics"')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(os.path.join(out_dir, "server.pem"), os.path.join(out_dir, "server-key.pem"))
context.load_verify_locations(os.path.join(out_dir, "ca.pem"))
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
