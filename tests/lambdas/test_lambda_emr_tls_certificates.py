"""The EMR TLS certificate custom resource: the zip it writes is checked with `cryptography`,
with the openssl command line and with a real TLS handshake between two "nodes"; the answers
to CloudFormation go to a local HTTP server standing in for the presigned response URL.

moto has no KMS GenerateDataKeyPair, so a botocore Stubber answers that one call with a key
pair made by `cryptography`; S3 is moto's.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import socket
import ssl
import subprocess
import threading
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.lambdas.conftest import LAMBDA_ROOT

BUCKET = "mlp-dev-artifacts-123456789012-us-east-1"
KEY = "emr/tls/certificates.zip"
PHYSICAL_ID = f"s3://{BUCKET}/{KEY}"
DNS_NAME = "*.ec2.internal"
ZIP_FILES = {"privateKey.pem", "certificateChain.pem", "trustedCertificates.pem"}


@pytest.fixture(scope="module")
def key_pairs() -> list[rsa.RSAPrivateKey]:
    """Two RSA-2048 keys, as KMS would make them (one per deploy that writes)."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


def kms_answer(key: rsa.RSAPrivateKey, key_arn: str) -> dict:
    """GenerateDataKeyPair's answer: PKCS#8 DER private key, SubjectPublicKeyInfo DER."""
    return {
        "PrivateKeyCiphertextBlob": b"opaque-ciphertext",
        "PrivateKeyPlaintext": key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "PublicKey": key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "KeyId": key_arn,
        "KeyPairSpec": "RSA_2048",
    }


class ResponseRecorder:
    """Stands in for CloudFormation's presigned response URL: records each PUT."""

    def __init__(self) -> None:
        self.answers: list[dict] = []
        self.content_types: list[str | None] = []
        self.url = ""


@pytest.fixture
def cloudformation() -> Iterator[ResponseRecorder]:
    recorder = ResponseRecorder()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            recorder.answers.append(json.loads(body))
            recorder.content_types.append(self.headers.get("Content-Type"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/presigned?X-Amz-Signature=x"
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def key_arn(aws_client) -> str:
    return aws_client("kms").create_key(Description="platform key")["KeyMetadata"]["Arn"]


@pytest.fixture
def writer(mocked_aws, aws_client, load_handler, monkeypatch) -> ModuleType:
    """The handler, importing its sibling module as the Lambda runtime would."""
    aws_client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.syspath_prepend(str(LAMBDA_ROOT / "emr_tls_certificates"))
    return load_handler("emr_tls_certificates")


@pytest.fixture
def kms_stub(writer) -> Iterator[Stubber]:
    with Stubber(writer.kms) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def event(
    request_type: str, url: str, key_arn: str, *, validity_days: int = 825, dns_name=DNS_NAME
) -> dict:
    return {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:writer",
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/mlp-dev-processing/g",
        "RequestId": "8c3f7d1e-0000-4000-8000-000000000001",
        "LogicalResourceId": "EmrTlsCertificates2E5ADFB1",
        "ResourceType": "Custom::EmrTlsCertificates",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:writer",
            "Bucket": BUCKET,
            "Key": KEY,
            "KmsKeyArn": key_arn,
            "DnsName": dns_name,
            # CloudFormation hands every property value to the function as a string.
            "ValidityDays": str(validity_days),
        },
        **({"PhysicalResourceId": PHYSICAL_ID} if request_type != "Create" else {}),
    }


@pytest.fixture
def write(
    writer, kms_stub, cloudformation, key_arn, lambda_context
) -> Callable[..., tuple[dict, dict[str, bytes]]]:
    """Runs one Create or Update with `key` as the KMS key pair; returns CloudFormation's
    answer and the files of the zip in S3."""

    def run(request_type: str, key: rsa.RSAPrivateKey, **properties) -> tuple[dict, dict]:
        kms_stub.add_response(
            "generate_data_key_pair",
            kms_answer(key, key_arn),
            expected_params={"KeyId": key_arn, "KeyPairSpec": "RSA_2048"},
        )
        writer.handler(
            event(request_type, cloudformation.url, key_arn, **properties), lambda_context
        )
        return cloudformation.answers[-1], stored_zip(writer)

    return run


def stored_zip(writer: ModuleType) -> dict[str, bytes]:
    body = writer.s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_create_writes_a_self_signed_ca_certificate_for_the_internal_domain(
    write, key_pairs, cloudformation
):
    started = datetime.now(UTC).replace(microsecond=0)
    answer, files = write("Create", key_pairs[0])

    assert set(files) == ZIP_FILES
    assert files["certificateChain.pem"] == files["trustedCertificates.pem"]
    cert = x509.load_pem_x509_certificate(files["certificateChain.pem"])
    assert cert.version is x509.Version.v3
    common_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DNS_NAME)])
    assert cert.subject == cert.issuer == common_name
    cert.verify_directly_issued_by(cert)  # self-signed: its own key verifies the signature
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    extensions = {extension.oid: extension for extension in cert.extensions}
    assert extensions[x509.BasicConstraints.oid].critical
    assert extensions[x509.BasicConstraints.oid].value.ca
    usage = extensions[x509.KeyUsage.oid].value
    assert (usage.digital_signature, usage.key_encipherment, usage.key_cert_sign) == (
        True,
        True,
        True,
    )
    assert list(extensions[x509.ExtendedKeyUsage.oid].value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert extensions[x509.SubjectAlternativeName.oid].value.get_values_for_type(x509.DNSName) == [
        DNS_NAME
    ]
    assert started <= cert.not_valid_before_utc <= datetime.now(UTC)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=825)
    assert 0 < cert.serial_number < 2**159

    assert answer == {
        "Status": "SUCCESS",
        "Reason": "See the logs of request 52fdfc07-2182-154f-163f-5f0f9a621d72",
        "PhysicalResourceId": PHYSICAL_ID,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/mlp-dev-processing/g",
        "RequestId": "8c3f7d1e-0000-4000-8000-000000000001",
        "LogicalResourceId": "EmrTlsCertificates2E5ADFB1",
        "Data": {
            "CertificateId": hashlib.sha256(
                cert.public_bytes(serialization.Encoding.DER)
            ).hexdigest()[:16],
            "SerialNumber": f"{cert.serial_number:x}",
            "NotAfter": cert.not_valid_after_utc.isoformat(),
        },
    }
    # The presigned URL is signed for no content type.
    assert cloudformation.content_types == [""]


def test_the_private_key_is_the_kms_pair_and_matches_the_certificate(write, key_pairs):
    _, files = write("Create", key_pairs[0])

    assert files["privateKey.pem"].startswith(b"-----BEGIN PRIVATE KEY-----\n")
    private_key = serialization.load_pem_private_key(files["privateKey.pem"], password=None)
    assert private_key.private_numbers() == key_pairs[0].private_numbers()
    cert = x509.load_pem_x509_certificate(files["certificateChain.pem"])
    assert cert.public_key().public_numbers() == private_key.public_key().public_numbers()


def test_the_zip_is_encrypted_with_the_platform_key(write, key_pairs, writer, key_arn):
    write("Create", key_pairs[0])

    head = writer.s3.head_object(Bucket=BUCKET, Key=KEY)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_arn


@pytest.fixture
def pem_files(write, key_pairs, tmp_path) -> Path:
    _, files = write("Create", key_pairs[0])
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


def openssl(*args: str) -> str:
    result = subprocess.run(
        ["openssl", *args], capture_output=True, text=True, check=True, timeout=30
    )
    return result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_reads_verifies_and_pairs_the_certificate_and_key(pem_files):
    chain, trusted, key = (
        str(pem_files / name)
        for name in ("certificateChain.pem", "trustedCertificates.pem", "privateKey.pem")
    )

    text = openssl("x509", "-noout", "-text", "-in", chain)
    assert "Signature Algorithm: sha256WithRSAEncryption" in text
    assert "Public-Key: (2048 bit)" in text
    assert "CA:TRUE" in text
    assert "DNS:*.ec2.internal" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    for purpose in ("sslserver", "sslclient"):
        verified = openssl("verify", "-x509_strict", "-purpose", purpose, "-CAfile", trusted, chain)
        assert verified.strip() == f"{chain}: OK"
    assert "RSA key ok" in openssl("rsa", "-check", "-noout", "-in", key)
    assert openssl("x509", "-noout", "-modulus", "-in", chain) == openssl(
        "rsa", "-noout", "-modulus", "-in", key
    )


def test_two_nodes_complete_a_mutual_tls_handshake_with_the_zip(pem_files):
    """What EMR does with the zip: every node serves certificateChain.pem with privateKey.pem
    and trusts trustedCertificates.pem, and nodes are reached by their internal DNS names."""

    def node_context(purpose: ssl.Purpose) -> ssl.SSLContext:
        context = ssl.create_default_context(purpose, cafile=pem_files / "trustedCertificates.pem")
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(pem_files / "certificateChain.pem", pem_files / "privateKey.pem")
        return context

    def handshake(server_hostname: str) -> dict:
        server_side = node_context(ssl.Purpose.CLIENT_AUTH)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            peer: dict = {}

            def serve() -> None:
                connection, _ = listener.accept()
                try:
                    with server_side.wrap_socket(connection, server_side=True) as tls:
                        peer["client"] = tls.getpeercert()
                except ssl.SSLError as error:
                    peer["server_error"] = error

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                node_context(ssl.Purpose.SERVER_AUTH).wrap_socket(
                    raw, server_hostname=server_hostname
                ) as tls,
            ):
                peer["server"] = tls.getpeercert()
            thread.join(timeout=10)
            return peer

    peer = handshake("ip-10-20-3-17.ec2.internal")
    assert peer["server"]["subjectAltName"] == (("DNS", DNS_NAME),)
    assert peer["client"]["subjectAltName"] == (("DNS", DNS_NAME),)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake("ip-10-20-3-17.eu-west-1.compute.internal")


def test_another_region_gets_its_own_internal_domain(write, key_pairs):
    domain = "*.eu-west-1.compute.internal"
    _, files = write("Create", key_pairs[0], dns_name=domain)

    cert = x509.load_pem_x509_certificate(files["certificateChain.pem"])
    assert cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [domain]


def test_an_update_writes_a_new_key_and_certificate_to_the_same_object(write, key_pairs):
    first, first_files = write("Create", key_pairs[0])
    second, second_files = write("Update", key_pairs[1], validity_days=30)

    assert second["Status"] == "SUCCESS"
    assert second["PhysicalResourceId"] == first["PhysicalResourceId"] == PHYSICAL_ID
    assert second["Data"]["CertificateId"] != first["Data"]["CertificateId"]
    cert = x509.load_pem_x509_certificate(second_files["certificateChain.pem"])
    assert cert.public_key().public_numbers() == key_pairs[1].public_key().public_numbers()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30)
    assert first_files["privateKey.pem"] != second_files["privateKey.pem"]


def test_delete_leaves_the_object_and_calls_nothing(
    write, key_pairs, writer, cloudformation, key_arn, lambda_context
):
    _, files = write("Create", key_pairs[0])

    # The Stubber has no KMS answer queued: any KMS call would fail the Delete.
    writer.handler(event("Delete", cloudformation.url, key_arn), lambda_context)

    assert cloudformation.answers[-1]["Status"] == "SUCCESS"
    assert cloudformation.answers[-1]["PhysicalResourceId"] == PHYSICAL_ID
    assert stored_zip(writer) == files


def test_a_kms_refusal_is_answered_as_a_failure_and_writes_nothing(
    writer, kms_stub, cloudformation, key_arn, lambda_context
):
    kms_stub.add_client_error(
        "generate_data_key_pair",
        service_error_code="AccessDeniedException",
        service_message="not allowed to use the key",
        http_status_code=400,
    )

    writer.handler(event("Create", cloudformation.url, key_arn), lambda_context)

    (answer,) = cloudformation.answers
    assert answer["Status"] == "FAILED"
    assert answer["PhysicalResourceId"] == PHYSICAL_ID
    assert "AccessDeniedException" in answer["Reason"]
    assert "not allowed to use the key" in answer["Reason"]
    assert writer.s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_an_unknown_request_type_is_answered_as_a_failure(
    writer, cloudformation, key_arn, lambda_context
):
    writer.handler(event("Rotate", cloudformation.url, key_arn), lambda_context)

    (answer,) = cloudformation.answers
    assert answer["Status"] == "FAILED"
    assert answer["Reason"] == "ValueError: unknown RequestType 'Rotate'"


def secrets_of(key: rsa.RSAPrivateKey) -> list[str]:
    """Text forms of the private key a careless log line could carry."""
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    numbers = key.private_numbers()
    body = base64.b64encode(der).decode()
    return [
        *(body[i : i + 64] for i in range(0, len(body), 64)),  # every PEM line
        der.hex(),
        str(numbers.d),
        f"{numbers.d:x}",
        f"{numbers.p:x}",
    ]


def test_no_key_material_reaches_the_logs_or_cloudformation(
    caplog, write, key_pairs, writer, kms_stub, cloudformation, key_arn, lambda_context
):
    write("Create", key_pairs[0])
    # A failure after KMS handed out the key: the key is in memory when the error is logged.
    kms_stub.add_response("generate_data_key_pair", kms_answer(key_pairs[1], key_arn))
    failing = event("Update", cloudformation.url, key_arn)
    failing["ResourceProperties"]["Bucket"] = "no-such-bucket"
    writer.handler(failing, lambda_context)

    # Each record as the function's log formatter writes it (message, extras, traceback).
    logs = "\n".join(writer.logger.registered_formatter.format(r) for r in caplog.records)
    assert "Certificates written" in logs
    assert "Certificates not written" in logs
    assert cloudformation.answers[-1]["Status"] == "FAILED"
    answers = json.dumps(cloudformation.answers)
    for key in key_pairs:
        for secret in secrets_of(key):
            assert secret not in logs
            assert secret not in answers


# --- certificate.py on its own -------------------------------------------------------------


@pytest.fixture
def certificate_module(monkeypatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(LAMBDA_ROOT / "emr_tls_certificates"))
    import certificate

    return certificate


def test_signatures_equal_those_of_cryptography(certificate_module, key_pairs):
    # PKCS#1 v1.5 signatures are deterministic, so both must produce the same bytes.
    key = key_pairs[0]
    numbers = key.private_numbers()
    message = b"to be signed"
    ours = certificate_module.sign_pkcs1v15_sha256(
        certificate_module.RsaPrivateKey(
            numbers.public_numbers.n, numbers.public_numbers.e, numbers.d
        ),
        message,
    )
    assert ours == key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def test_validity_past_2049_is_written_as_generalized_time(certificate_module, key_pairs):
    answer = kms_answer(key_pairs[0], "arn")
    cert = certificate_module.self_signed_certificate(
        private_key_der=answer["PrivateKeyPlaintext"],
        public_key_der=answer["PublicKey"],
        dns_name=DNS_NAME,
        validity=timedelta(days=3650),
        now=datetime(2045, 6, 1, tzinfo=UTC),
    )
    parsed = x509.load_der_x509_certificate(cert.der)
    assert parsed.not_valid_before_utc == datetime(2045, 6, 1, tzinfo=UTC)
    assert parsed.not_valid_after_utc == datetime(2055, 5, 30, tzinfo=UTC)
    assert b"\x18\x0f20550530000000Z" in cert.der  # GeneralizedTime, 15 characters


def test_keys_that_are_not_an_rsa_pair_are_refused(certificate_module, key_pairs):
    first, second = (kms_answer(key, "arn") for key in key_pairs)
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    build = certificate_module.self_signed_certificate
    common = {"dns_name": DNS_NAME, "validity": timedelta(days=1), "now": datetime.now(UTC)}

    with pytest.raises(ValueError, match="does not belong to the private key"):
        build(
            private_key_der=first["PrivateKeyPlaintext"],
            public_key_der=second["PublicKey"],
            **common,
        )
    with pytest.raises(ValueError, match="not an rsaEncryption key"):
        build(private_key_der=ec_key, public_key_der=first["PublicKey"], **common)
    with pytest.raises(ValueError, match="truncated DER element"):
        build(
            private_key_der=first["PrivateKeyPlaintext"][:100],
            public_key_der=first["PublicKey"],
            **common,
        )
