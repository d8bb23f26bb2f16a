"""HTTPS on the instance (``--certfile``, ``--keyfile``) and protected mode's TLS half,
with real certificates the tests make with the ``openssl`` CLI."""

import json
import os
import socket
import ssl
import subprocess
import warnings

import pytest
from conftest import Certificate, checked_fetch
from helpers import PY, REPO, TLS12_AEAD, TLS12_CBC, https, tls12_cipher
from tornado.httpclient import AsyncHTTPClient

from taskrunner.config import Config

TOKEN = "tls-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The certificates and keys, good and bad, that the tests serve with."""
    directory = str(tmp_path_factory.mktemp("certs"))
    made = {"good": Certificate(directory, "good"), "other": Certificate(directory, "other"),
            "small": Certificate(directory, "small", key="rsa:1024")}
    encrypted = os.path.join(directory, "encrypted.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-aes-128-cbc", "-pass", "pass:secret",
                    "-out", encrypted], check=True, capture_output=True, timeout=60)
    garbage = os.path.join(directory, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    both = os.path.join(directory, "both.pem")  # certificate and key in one file
    with open(both, "wb") as f:
        for part in (made["good"].cert, made["good"].key):
            with open(part, "rb") as source:
                f.write(source.read())
    return {**made, "dir": directory, "encrypted": encrypted, "garbage": garbage,
            "both": both}


@pytest.fixture
def config(certs):
    return Config(port=0, grace=2.0, certfile=certs["good"].cert, keyfile=certs["good"].key)


def start(*args, env=None):
    """``python -m taskrunner ARGS`` expected to refuse to start: (exit status, stderr)."""
    environ = {k: v for k, v in os.environ.items() if k != "TASKRUNNER_TOKEN"}
    proc = subprocess.run([PY, "-m", "taskrunner", "--port", "0", *args], cwd=REPO,
                          env={**environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stderr


# -- serving HTTPS ----------------------------------------------------------------------

@pytest.mark.gen_test
async def test_run_over_https_verified_against_the_certificate(instance, certs):
    client = AsyncHTTPClient(force_instance=True)
    try:
        base = f"https://localhost:{instance.port}"
        response = await checked_fetch(client, base, "POST", "/run",
                                       {"args": ["echo", "over tls"]},
                                       ca_certs=certs["good"].cert)
        assert response.code == 200
        assert json.loads(response.body)["stdout"] == "over tls\n"
        # A client that trusts another certificate refuses the instance's: it is checked.
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.fetch(base + "/healthz", ca_certs=certs["other"].cert)
    finally:
        client.close()


def test_tls_12_or_later_and_http_11(spawn_instance, certs):
    good = certs["good"]
    child = spawn_instance("--certfile", good.cert, "--keyfile", good.key)
    context = good.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (socket.create_connection(("127.0.0.1", child.port), timeout=30) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.version() == "TLSv1.2"
        assert tls.selected_alpn_protocol() == "http/1.1"  # Tornado speaks no HTTP/2
    # A TLS 1.1 client is turned away by the instance, not by its own settings.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(good.cert)
    old.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():  # deprecated versions: being old is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with (socket.create_connection(("127.0.0.1", child.port), timeout=30) as raw,
          pytest.raises(ssl.SSLError, match=r"(?i)protocol version|alert")):
        old.wrap_socket(raw, server_hostname="localhost")
    assert https(child.port, "GET", "/healthz", good.cert)[0] == 200


@pytest.mark.parametrize("key", ["ec", "rsa:2048"])
def test_tls_12_takes_ecdhe_with_aead_only_never_cbc(spawn_instance, tmp_path, key):
    cert = Certificate(str(tmp_path), "server", key=key)
    child = spawn_instance("--certfile", cert.cert, "--keyfile", cert.key)
    auth = "ECDSA" if key == "ec" else "RSA"
    for aead in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305"):
        assert tls12_cipher(child.port, cert.cert, f"ECDHE-{auth}-{aead}") == \
            f"ECDHE-{auth}-{aead}"
    # CBC suites, one by one and all at once, and whatever else OpenSSL knows: refused.
    for refused in (f"ECDHE-{auth}-AES128-SHA", f"ECDHE-{auth}-AES128-SHA256",
                    f"ECDHE-{auth}-AES256-SHA384", TLS12_CBC,
                    "ALL:COMPLEMENTOFALL:!ECDHE+AESGCM:!ECDHE+CHACHA20"):
        with pytest.raises(ssl.SSLError, match=r"(?i)handshake failure"):
            tls12_cipher(child.port, cert.cert, refused)
    assert tls12_cipher(child.port, cert.cert, TLS12_AEAD).startswith(f"ECDHE-{auth}-")
    with (socket.create_connection(("127.0.0.1", child.port), timeout=30) as raw,
          cert.client_context().wrap_socket(raw, server_hostname="localhost") as tls):
        assert tls.version() == "TLSv1.3"  # TLS 1.3 as it is
    assert https(child.port, "GET", "/healthz", cert.cert)[0] == 200


def test_a_certificate_signed_through_an_intermediate_serves_its_chain(spawn_instance,
                                                                         tmp_path):
    # What a real certificate looks like: the client trusts the root only, so the instance
    # must send the intermediate after its own certificate (--certfile holds both).
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True,
                       timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (tmp_path / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\n"
                                     "keyUsage=critical,keyCertSign,cRLSign\n")
    (tmp_path / "leaf.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("req", "-x509", *ec, "-keyout", "root.key", "-out", "root.crt", "-days", "2",
            "-subj", "/CN=test root")
    openssl("req", *ec, "-keyout", "mid.key", "-out", "mid.csr", "-subj", "/CN=test mid")
    openssl("x509", "-req", "-in", "mid.csr", "-CA", "root.crt", "-CAkey", "root.key",
            "-CAcreateserial", "-out", "mid.crt", "-days", "2", "-extfile", "ca.ext")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "mid.crt", "-CAkey", "mid.key",
            "-CAcreateserial", "-out", "leaf.crt", "-days", "2", "-extfile", "leaf.ext")
    chain = tmp_path / "chain.pem"
    chain.write_bytes((tmp_path / "leaf.crt").read_bytes() + (tmp_path / "mid.crt").read_bytes())
    child = spawn_instance("--certfile", str(chain), "--keyfile", str(tmp_path / "leaf.key"))
    # The client trusts the root only.
    status, body = https(child.port, "POST", "/run", str(tmp_path / "root.crt"),
                         {"args": ["echo", "chained"]})
    assert (status, body["stdout"]) == (200, "chained\n")


def test_the_certificate_and_key_may_share_one_file(spawn_instance, certs):
    child = spawn_instance("--certfile", certs["both"])
    assert https(child.port, "GET", "/healthz", certs["good"].cert)[0] == 200


# -- unusable files: one line, exit 1 ---------------------------------------------------

@pytest.mark.parametrize("cert,key,says", [
    ("missing", "good.key", "cannot read --certfile"),
    ("good.cert", "missing", "cannot read --keyfile"),
    ("dir", "good.key", "cannot read --certfile"),
    ("garbage", "good.key", "holds no PEM certificate"),
    ("good.cert", "good.cert", "holds no PEM private key"),
    ("good.cert", "", "holds no PEM private key"),
    ("good.cert", "other.key", "the key does not belong to the certificate"),
    ("good.cert", "encrypted", "the private key is encrypted"),
    ("small.cert", "small.key", "too small"),
])
def test_unusable_certificate_or_key_is_a_one_line_startup_error(certs, cert, key, says):
    def path(name):
        if name == "missing":
            return os.path.join(certs["dir"], "absent.pem")
        which, _, part = name.partition(".")
        return getattr(certs[which], part) if part else certs[which]

    args = ["--certfile", path(cert)] + (["--keyfile", path(key)] if key else [])
    status, stderr = start(*args)
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("taskrunner: ") and says in lines[0], lines[0]


# -- protected mode ---------------------------------------------------------------------

def test_protected_mode_refuses_a_public_address_without_tls(certs):
    status, stderr = start("--address", "0.0.0.0", env={"TASKRUNNER_TOKEN": TOKEN})
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "without TLS" in lines[0]
    assert "--certfile" in lines[0] and "--insecure-http" in lines[0]


def test_tls_does_not_replace_the_token(certs):
    good = certs["good"]
    status, stderr = start("--address", "0.0.0.0", "--certfile", good.cert,
                           "--keyfile", good.key)
    assert status == 1
    assert "without a token" in stderr and len(stderr.strip().splitlines()) == 1


def test_a_public_address_with_a_token_and_tls_starts(spawn_instance, certs):
    good = certs["good"]
    child = spawn_instance("--address", "0.0.0.0", "--certfile", good.cert,
                           "--keyfile", good.key, env={"TASKRUNNER_TOKEN": TOKEN})
    assert "(https," in child.output()
    assert https(child.port, "POST", "/run", good.cert, {"args": ["true"]})[0] == 401
    status, body = https(child.port, "POST", "/run", good.cert, {"args": ["echo", "ok"]}, AUTH)
    assert (status, body["stdout"]) == (200, "ok\n")


def test_insecure_http_starts_on_a_public_address_and_says_so(spawn_instance):
    child = spawn_instance("--address", "0.0.0.0", "--insecure-http",
                           env={"TASKRUNNER_TOKEN": TOKEN})
    assert "(http," in child.output()
    assert "WARNING taskrunner.tls serving plain HTTP on '0.0.0.0' (--insecure-http)" \
        in child.output()


@pytest.mark.parametrize("args,says", [
    (["--keyfile", "k.pem"], "keyfile needs certfile"),
    (["--certfile", "c.pem", "--insecure-http"], "insecure_http contradicts certfile"),
])
def test_contradictory_tls_flags_are_refused(args, says):
    status, stderr = start(*args)
    assert status == 2
    assert says in stderr
