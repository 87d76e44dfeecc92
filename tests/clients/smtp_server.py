"""A real SMTP server for the e-mail tests (aiosmtpd): STARTTLS required and
AUTH (PLAIN/LOGIN) required after it, with a certificate for 127.0.0.1
signed by a CA made here. Each message received is written to OUT_DIR as
<n>.eml; the CA's certificate is written to OUT_DIR/ca.pem.

usage: smtp_server.py PORT OUT_DIR USER PASSWORD
Prints "ready" once listening.
"""
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography.x509.oid import ExtendedKeyUsageOID

from test_ca import TestCa, write_pem

port, out_dir, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(out_dir, exist_ok=True)

ca = TestCa("vigil test CA")
key, cert = ca.leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, dns=["localhost"], ips=["127.0.0.1"])
write_pem(out_dir, "ca.pem", ca.cert)
cert_path = write_pem(out_dir, "cert.pem", cert)
key_path = write_pem(out_dir, "key.pem", key)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert_path, key_path)


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    return AuthResult(success=ok)


class Inbox:
    count = 0

    async def handle_DATA(self, server, session, envelope):
        Inbox.count += 1
        path = os.path.join(out_dir, f"{Inbox.count}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(f"X-Envelope-From: {envelope.mail_from}\r\n".encode())
            f.write(f"X-Envelope-To: {','.join(envelope.rcpt_tos)}\r\n".encode())
            f.write(f"X-Was-Tls: {session.ssl is not None}\r\n".encode())
            f.write(f"X-Authenticated: {session.authenticated}\r\n".encode())
            f.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


controller = Controller(
    Inbox(),
    hostname="127.0.0.1",
    port=port,
    tls_context=context,
    require_starttls=True,
    auth_required=True,
    auth_require_tls=True,
    authenticator=authenticate,
)
controller.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
