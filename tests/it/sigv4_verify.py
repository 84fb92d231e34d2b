"""Verifies AWS Signature V4 on requests whale sent (captured by tests/it/index.rs,
`opensearch_aws_sigv4_signatures_verify_with_botocore`) with botocore, AWS's own Python
implementation, independent of the Rust signer: each request is signed again by botocore with the
same credentials (from the environment), region, service and x-amz-date, over the headers the
request says it signed, and the Authorization headers must be equal. The body hash is checked
against the body. Usage: python sigv4_verify.py REQUESTS.json REGION SERVICE
"""

import datetime
import hashlib
import json
import os
import re
import sys
from urllib.parse import parse_qsl

import botocore
import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<cred>[^,]+), ?SignedHeaders=(?P<signed>[^,]+), ?Signature=(?P<sig>[0-9a-f]{64})$"
)
# What every signed request must cover (x-amz-security-token: credentials with a session token).
MUST_SIGN = {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}


def verify(req, creds, region, service):
    headers = {}
    for name, value in req["headers"]:
        headers[name.lower()] = value
    m = AUTH.match(headers.get("authorization", ""))
    if not m:
        return "no AWS4-HMAC-SHA256 Authorization header: %r" % headers.get("authorization")
    signed = m.group("signed").split(";")
    missing = MUST_SIGN - set(signed)
    if missing:
        return "signed headers lack %s" % sorted(missing)
    body = bytes(req["body"])
    if body and "content-type" not in signed:
        return "content-type not signed"
    path, _, query = req["target"].partition("?")
    aws = AWSRequest(
        method=req["method"],
        url="http://" + headers["host"] + path,
        data=body,
        params=parse_qsl(query, keep_blank_values=True),
        headers={h: headers[h] for h in signed},
    )
    signer = SigV4Auth(creds, service, region)
    if signer.payload(aws) != headers["x-amz-content-sha256"]:
        return "x-amz-content-sha256 is not the SHA-256 of the body"
    if hashlib.sha256(body).hexdigest() != headers["x-amz-content-sha256"]:
        return "x-amz-content-sha256 differs from hashlib's"
    when = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    botocore.auth.get_current_datetime = lambda: when
    signer.add_auth(aws)
    # botocore signs every header it is given except a few (user-agent among them): compare with
    # the request's own list restored.
    expected = aws.headers["Authorization"]
    theirs = headers["authorization"]
    ours = AUTH.match(expected)
    if ours.group("cred") != m.group("cred"):
        return "credential scope %s, botocore %s" % (m.group("cred"), ours.group("cred"))
    boto_signed = set(ours.group("signed").split(";"))
    if boto_signed != set(signed) - {"user-agent"}:
        return "botocore signed %s, the request %s" % (sorted(boto_signed), signed)
    if "user-agent" in signed:
        return "user-agent is signed (proxies may change it; botocore never signs it)"
    if ours.group("sig") != m.group("sig"):
        return "signature %s, botocore %s\ncanonical request (botocore):\n%s" % (
            m.group("sig"),
            ours.group("sig"),
            signer.canonical_request(aws),
        )
    return None, theirs


def main():
    requests = json.load(open(sys.argv[1]))
    region, service = sys.argv[2], sys.argv[3]
    creds = Credentials(
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        os.environ.get("AWS_SESSION_TOKEN"),
    )
    print("botocore %s, region %s, service %s" % (botocore.__version__, region, service))
    ok = failed = 0
    for req in requests:
        result = verify(req, creds, region, service)
        line = "%s %s (%d bytes)" % (req["method"], req["target"], len(req["body"]))
        if isinstance(result, tuple):
            ok += 1
            auth = result[1]
            print("verified %s\n    %s" % (line, auth[: auth.index("Signature=")] + "Signature=" + auth[-64:]))
        else:
            failed += 1
            print("FAILED   %s: %s" % (line, result))
    print("%d verified, %d failed" % (ok, failed))
    sys.exit(1 if failed else 0)


main()
