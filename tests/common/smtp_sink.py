"""A real SMTP server for the delivery tests (aiosmtpd).

Usage: smtp_sink.py PORT DIR [USER:PASSWORD]

Listens on 127.0.0.1:PORT and writes each received message to DIR as
<n>.eml (the raw DATA) and <n>.json (the envelope plus what Python's email
package makes of it: headers, decoded text body, attachments, MIME
defects). With USER:PASSWORD it requires AUTH (allowed without TLS: the test
runs on loopback). Prints "ready" on stdout once it accepts connections.
While DIR/defer-rcpt exists, the addresses it lists (one a line) are refused
at RCPT with 451 (try again later), so a test can fail one recipient.
"""

import base64
import email
import email.policy
import json
import os
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def login_of(session):
    data = getattr(session, "auth_data", None)
    login = getattr(data, "login", None)
    return login.decode() if isinstance(login, bytes) else login


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.lock = threading.Lock()
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        try:
            with open(os.path.join(self.directory, "defer-rcpt")) as f:
                deferred = {line.strip() for line in f if line.strip()}
        except FileNotFoundError:
            deferred = set()
        if address in deferred:
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        attachments = []
        for part in msg.iter_attachments():
            attachments.append(
                {
                    "filename": part.get_filename(),
                    "content_type": part.get_content_type(),
                    "data_b64": base64.b64encode(part.get_payload(decode=True) or b"").decode(),
                }
            )
        defects = [repr(d) for d in msg.defects]
        for part in msg.walk():
            defects.extend(repr(d) for d in part.defects)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "auth": login_of(session),
            "headers": {k.lower(): str(v) for k, v in msg.items()},
            "content_type": msg.get_content_type(),
            "body_charset": body.get_content_charset() if body is not None else None,
            "body_cte": body.get("Content-Transfer-Encoding") if body is not None else None,
            "body": body.get_content() if body is not None else None,
            "attachments": attachments,
            "defects": defects,
        }
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.directory, "%04d" % n)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(raw)
        os.rename(base + ".eml.tmp", base + ".eml")
        with open(base + ".json.tmp", "w") as f:
            json.dump(record, f)
        os.rename(base + ".json.tmp", base + ".json")
        return "250 Message accepted for delivery"


def main():
    port = int(sys.argv[1])
    directory = sys.argv[2]
    kwargs = {}
    if len(sys.argv) > 3:
        user, password = sys.argv[3].split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            return AuthResult(success=ok, auth_data=auth_data if ok else None)

        kwargs = {
            "authenticator": authenticator,
            "auth_required": True,
            "auth_require_tls": False,
        }
    controller = Controller(
        Sink(directory), hostname="127.0.0.1", port=port, decode_data=False, **kwargs
    )
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
