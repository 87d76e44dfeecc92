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
import datetime
import http.server
import os
import ssl
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

port, out_dir, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(out_dir, exist_ok=True)
now = datetime.datetime.now(datetime.timezone.utc)

ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil scrape test CA")])
ca = (
    x509.CertificateBuilder()
    .subject_name(ca_name)
    .issuer_name(ca_name)
    .public_key(ca_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .add_extension(
        x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    .sign(ca_key, hashes.SHA256())
)


def leaf(name, usage, san):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def write(path, data):
    with open(os.path.join(out_dir, path), "wb") as f:
        f.write(data)


def pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


server_key, server_cert = leaf("exporter.test", ExtendedKeyUsageOID.SERVER_AUTH, "exporter.test")
client_key, client_cert = leaf("vigil scraper", ExtendedKeyUsageOID.CLIENT_AUTH, None)
write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
write("client.pem", client_cert.public_bytes(serialization.Encoding.PEM))
write("client-key.pem", pem_key(client_key))
write("server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
write("server-key.pem", pem_key(server_key))

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
