"""Writes the PEM certificates that EMR's in-transit encryption reads, at every deploy that
needs new ones: a Lambda-backed CloudFormation custom resource.

CloudFormation invokes the function directly (no Provider framework) and the function answers
at the event's ``ResponseURL`` itself, always: success or failure, never silence.

Resource properties: ``Bucket``, ``Key`` (where the zip goes), ``KmsKeyArn`` (the platform
key), ``DnsName`` (the region's internal domain as a wildcard, e.g. ``*.ec2.internal``) and
``ValidityDays``.

Create and Update (CloudFormation sends an Update only when a property changed, e.g.
``ValidityDays``): AWS KMS ``GenerateDataKeyPair`` (``RSA_2048``, under ``KmsKeyArn``) makes a
new key pair; ``certificate.py`` builds a self-signed certificate for ``DnsName``, valid for
``ValidityDays`` from now; the zip of ``privateKey.pem`` (PKCS#8), ``certificateChain.pem``
and ``trustedCertificates.pem`` (both the certificate) is written to ``s3://Bucket/Key`` with
SSE-KMS under ``KmsKeyArn``.

Delete: writes and deletes nothing; the object stays. The bucket keeps versions, so a delete
would not erase the key material anyway, and deleting would remove a zip the user uploaded
after switching to ``emr_tls.certificates: provided`` (that switch deletes this resource).

Answer: ``PhysicalResourceId`` ``s3://Bucket/Key`` (the same for every Update, so an Update
never makes CloudFormation delete the object it just replaced) and ``Data``:
``CertificateId`` (the first 16 hex digits of the certificate's SHA-256 fingerprint),
``SerialNumber`` (hex) and ``NotAfter`` (ISO 8601).

The private key lives only in this function's memory between KMS and S3: it is never logged,
never part of the answer and never part of an error message.

IAM: ``kms:GenerateDataKeyPair`` (``RSA_2048``) and ``kms:GenerateDataKey`` (for the SSE-KMS
upload) on the platform key, ``s3:PutObject`` on the one object.
"""

from __future__ import annotations

import io
import json
import urllib.request
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from certificate import Certificate, pem, self_signed_certificate

KEY_PAIR_SPEC = "RSA_2048"
PRIVATE_KEY_FILE = "privateKey.pem"
CHAIN_FILE = "certificateChain.pem"
TRUSTED_FILE = "trustedCertificates.pem"
RESPONSE_TIMEOUT_SECONDS = 30
# CloudFormation refuses response bodies over 4 KB; a long error message must not cause that.
_MAX_REASON = 1000

logger = Logger(service="emr-tls-certificates")
kms = boto3.client("kms")
s3 = boto3.client("s3")
# The response URL is a presigned S3 URL, reached directly, never through a proxy.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> None:
    request_type = event.get("RequestType")
    properties = event.get("ResourceProperties", {})
    physical_id = f"s3://{properties.get('Bucket')}/{properties.get('Key')}"
    try:
        if request_type in ("Create", "Update"):
            data = _write_certificates(properties)
        elif request_type == "Delete":
            logger.info("Leaving the certificates in place", extra={"object": physical_id})
            data = {}
        else:
            raise ValueError(f"unknown RequestType {request_type!r}")
    except Exception as error:
        logger.exception("Certificates not written", extra={"request_type": request_type})
        _respond(event, context, "FAILED", physical_id, reason=f"{type(error).__name__}: {error}")
        return
    _respond(event, context, "SUCCESS", physical_id, data=data)


def _write_certificates(properties: dict[str, Any]) -> dict[str, str]:
    key_arn = properties["KmsKeyArn"]
    key_pair = kms.generate_data_key_pair(KeyId=key_arn, KeyPairSpec=KEY_PAIR_SPEC)
    certificate = self_signed_certificate(
        private_key_der=key_pair["PrivateKeyPlaintext"],
        public_key_der=key_pair["PublicKey"],
        dns_name=properties["DnsName"],
        validity=timedelta(days=int(properties["ValidityDays"])),
        now=datetime.now(UTC),
    )
    s3.put_object(
        Bucket=properties["Bucket"],
        Key=properties["Key"],
        Body=_zip(key_pair["PrivateKeyPlaintext"], certificate),
        ContentType="application/zip",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=key_arn,
        BucketKeyEnabled=True,
    )
    facts = {
        "CertificateId": certificate.sha256_fingerprint[:16],
        "SerialNumber": f"{certificate.serial_number:x}",
        "NotAfter": certificate.not_after.isoformat(),
    }
    logger.info(
        "Certificates written",
        extra={
            "object": f"s3://{properties['Bucket']}/{properties['Key']}",
            "dns_name": properties["DnsName"],
            "sha256_fingerprint": certificate.sha256_fingerprint,
            **facts,
        },
    )
    return facts


def _zip(private_key_der: bytes, certificate: Certificate) -> bytes:
    certificate_pem = pem("CERTIFICATE", certificate.der)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(PRIVATE_KEY_FILE, pem("PRIVATE KEY", private_key_der))
        archive.writestr(CHAIN_FILE, certificate_pem)
        archive.writestr(TRUSTED_FILE, certificate_pem)
    return buffer.getvalue()


def _respond(
    event: dict[str, Any],
    context: Any,
    status: str,
    physical_id: str,
    *,
    data: dict[str, str] | None = None,
    reason: str = "",
) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": (reason or f"See the logs of request {context.aws_request_id}")[:_MAX_REASON],
            "PhysicalResourceId": physical_id,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data or {},
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"],
        data=body,
        method="PUT",
        # The presigned URL is signed for an empty content type.
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with opener.open(request, timeout=RESPONSE_TIMEOUT_SECONDS) as response:
        logger.info("Answered CloudFormation", extra={"status": status, "http": response.status})
