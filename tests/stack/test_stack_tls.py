"""The stack with TLS at nginx (``TASKRUNNER_TLS_CERT``, ``TASKRUNNER_TLS_KEY``), for real:
HTTPS verified against a certificate the test makes, modern protocols only, and plain
HTTP to the port refused (a caller with a token) or redirected (anyone else).

Ports 18780 and 19585-19588.
"""

import http.client
import json
import os
import socket
import ssl
import subprocess
import warnings

import pytest
from conftest import Certificate
from helpers import REPO, TLS12_AEAD, TLS12_CBC, tls12_cipher
from stackutil import STACK, needs_stack, running_stack

from lab.deploy import nginx
from taskrunner.web.tls import TLS12_CIPHERS

pytestmark = needs_stack()

PORT, BASE = 18780, 19585
TOKEN = "stack-tls-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return Certificate(str(tmp_path_factory.mktemp("stack-tls-certs")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, cert):
    run_dir = str(tmp_path_factory.mktemp("stack-tls"))
    env = {"TASKRUNNER_TOKEN": TOKEN, "TASKRUNNER_TLS_CERT": cert.cert,
           "TASKRUNNER_TLS_KEY": cert.key}
    with running_stack(run_dir, PORT, BASE, env=env) as stack:
        yield stack


def https(cert, method, path, body=None, headers=None):
    conn = http.client.HTTPSConnection("localhost", PORT, context=cert.client_context(),
                                       timeout=30)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def plain(method, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    try:
        conn.request(method, path, json.dumps({"args": ["true"]}) if method == "POST" else None,
                     headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_run_through_nginx_over_verified_https(stack, cert):
    status, headers, body = https(cert, "POST", "/run", {"args": ["echo", "via nginx"]}, AUTH)
    assert (status, body["stdout"]) == (200, "via nginx\n")
    assert headers["X-Request-Id"]
    # Jobs take the per-instance routes: over HTTPS too.
    status, _, job = https(cert, "POST", "/jobs", {"args": ["echo", "job"]}, AUTH)
    assert status == 202
    status, _, _ = https(cert, "GET", f"/jobs/{job['id']}", headers=AUTH)
    assert status == 200


def test_modern_protocols_only(stack, cert):
    context = cert.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (socket.create_connection(("127.0.0.1", PORT), timeout=30) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.version() == "TLSv1.2"
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cert.cert)
    old.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():  # deprecated versions: being old is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (socket.create_connection(("127.0.0.1", PORT), timeout=30) as raw,
          pytest.raises(ssl.SSLError)):
        old.wrap_socket(raw, server_hostname="localhost")


def test_tls_12_takes_ecdhe_with_aead_only_never_cbc(stack, cert):
    for aead in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305"):
        assert tls12_cipher(PORT, cert.cert, f"ECDHE-ECDSA-{aead}") == f"ECDHE-ECDSA-{aead}"
    # nginx's own default (HIGH:!aNULL:!MD5) would take every one of these.
    for refused in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA256",
                    "ECDHE-ECDSA-AES256-SHA384", TLS12_CBC,
                    "ALL:COMPLEMENTOFALL:!ECDHE+AESGCM:!ECDHE+CHACHA20"):
        with pytest.raises(ssl.SSLError, match=r"(?i)handshake failure"):
            tls12_cipher(PORT, cert.cert, refused)
    assert tls12_cipher(PORT, cert.cert, TLS12_AEAD).startswith("ECDHE-ECDSA-")


def test_nginx_and_its_documented_server_block_have_the_instances_ciphers():
    assert nginx.TLS12_CIPHERS == TLS12_CIPHERS
    with open(os.path.join(REPO, "docs", "deploy.md")) as f:
        assert f"    ssl_ciphers {TLS12_CIPHERS};\n" in f.read()


def test_plain_http_with_a_token_is_refused_in_json(stack):
    status, _, body = plain("POST", "/run", AUTH)
    assert status == 400
    assert json.loads(body)["error"] == "plain_http"


def test_plain_http_without_a_token_is_redirected_to_https(stack, cert):
    status, headers, _ = plain("GET", "/healthz?x=1")
    assert status == 308
    assert headers["Location"] == f"https://127.0.0.1:{PORT}/healthz?x=1"
    assert https(cert, "GET", "/healthz")[0] == 200


def test_a_certificate_without_its_key_is_refused_before_anything_starts(tmp_path, cert):
    env = {**os.environ, "TASKRUNNER_TLS_CERT": cert.cert, "TASKRUNNER_TLS_KEY": "",
           "TASKRUNNER_RUN_DIR": str(tmp_path), "TASKRUNNER_PORT": str(PORT),
           "TASKRUNNER_BASE_PORT": str(BASE)}
    done = subprocess.run([STACK, "up"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "TASKRUNNER_TLS_CERT and TASKRUNNER_TLS_KEY go together" in done.stderr
    assert os.listdir(tmp_path) == []
