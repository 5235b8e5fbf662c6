"""
Tests for VSS over HTTPS: the dispatcher's HTTP client checks the server's
certificate against the trusted certificate authorities and its host name,
over real TLS connections on the loopback interface.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from vss_dispatcher.http import make_http_client
from vss_dispatcher.message import Job
from vss_dispatcher.vss import ConfigurationFault, DisplayAPI, TransientFailure

JOB = Job(image_path="lobby/welcome.png", duration=5.0, message_id="tls-1")


class _Authority:
    """
    A certificate authority made for one test, and certificates it signs.
    """

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test VSS CA")])
        self.name = name
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        """
        The authority's certificate in PEM form, as a trust bundle holds it.
        """
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def server_options(self, host_name: str) -> ssl.CertificateOptions:
        """
        TLS options for a server whose certificate names C{host_name}.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)])
            )
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(host_name)]), False
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        server = ssl.PrivateCertificate.loadPEM(
            key_pem + certificate.public_bytes(serialization.Encoding.PEM)
        )
        return server.options()


class _RecordingVSS(Resource):
    """
    Accepts every display request and keeps its JSON body.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[Any] = []

    def render_POST(self, request: Request) -> bytes:
        self.jobs.append(json.loads(request.content.read()))
        return b'{"ok": true}'


class _PlainAnswer(Protocol):
    """
    A server that answers in plain HTTP at once and hangs up.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.transport.loseConnection()


class HTTPSTests(TestCase):
    """
    A VSS base URL with C{https} is reached over TLS, and only a server whose
    certificate is signed by a trusted authority and names the URL's host is
    accepted.
    """

    timeout = 30

    def setUp(self) -> None:
        self.authority = _Authority()
        self.vss = _RecordingVSS()

    def trust(self, authority: _Authority) -> None:
        """
        Make C{authority} the only trusted one for this test, the way an
        operator trusts a private authority: C{SSL_CERT_FILE} naming a
        bundle.
        """
        bundle = self.mktemp()
        with open(bundle, "wb") as file:
            file.write(authority.pem())
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = bundle

        def restore() -> None:
            if previous is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = previous

        self.addCleanup(restore)

    def serve(self, host_name: str) -> int:
        """
        Serve the recording VSS over TLS on a free loopback port, with a
        certificate for C{host_name} signed by the test's authority.

        @return: The port.
        """
        site = Site(self.vss)
        site.noisy = False
        port = reactor.listenSSL(
            0, site, self.authority.server_options(host_name), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def api(self, url: str) -> DisplayAPI:
        """
        The display API with the dispatcher's own HTTP client, at C{url}.
        """
        client, pool = make_http_client(reactor, 5)
        self.addCleanup(pool.closeCachedConnections)
        return DisplayAPI(client, url, 5, reactor)

    async def test_trusted_certificate_for_the_host(self) -> None:
        """
        A certificate for the URL's host, signed by a trusted authority, is
        accepted and the job reaches VSS.
        """
        self.trust(self.authority)
        number = self.serve("localhost")

        await self.api(f"https://localhost:{number}").attempt(JOB, False)

        self.assertEqual([job["message_id"] for job in self.vss.jobs], [JOB.message_id])

    async def test_certificate_for_another_host(self) -> None:
        """
        A certificate signed by a trusted authority but naming another host
        is refused, and nothing reaches VSS.
        """
        self.trust(self.authority)
        number = self.serve("vss.example.org")

        with self.assertRaises(ConfigurationFault) as caught:
            await self.api(f"https://localhost:{number}").attempt(JOB, False)

        self.assertEqual(
            str(caught.exception),
            "the TLS certificate VSS presented does not name the host in"
            " VSS_BASE_URL",
        )
        self.assertEqual(self.vss.jobs, [])

    async def test_certificate_from_untrusted_authority(self) -> None:
        """
        A certificate for the right host from an authority that is not
        trusted is refused, and nothing reaches VSS.
        """
        self.trust(_Authority())
        number = self.serve("localhost")

        with self.assertRaises(ConfigurationFault) as caught:
            await self.api(f"https://localhost:{number}").attempt(JOB, False)

        self.assertIn("not signed by a trusted", str(caught.exception))
        self.assertIn("SSL_CERT_FILE", str(caught.exception))
        self.assertEqual(self.vss.jobs, [])

    async def test_plain_server_at_https_url(self) -> None:
        """
        A server that does not speak TLS at an C{https} URL is a passing
        failure whose reason is written out, not a list of objects.
        """
        self.trust(self.authority)
        port = reactor.listenTCP(
            0, Factory.forProtocol(_PlainAnswer), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)

        with self.assertRaises(TransientFailure) as caught:
            await self.api(f"https://localhost:{port.getHost().port}").attempt(
                JOB, False
            )

        message = str(caught.exception)
        self.assertEqual(message, "cannot reach VSS: TLS failed: wrong version number")
        self.assertEqual(self.vss.jobs, [])
