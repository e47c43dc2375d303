#!/usr/bin/python3
"""An unmodified boto3 workload for the end-to-end tests.

It takes credentials from boto3's default chain (in a pod with no credentials that is the instance
metadata service), then reads an object of an S3 bucket and writes one. It prints one line per step,
as e2e/clients/gov2 does:

    creds <credential method> <access key id>
    get ok | get denied <code> | get error <message>
    put ok | put denied <code> | put error <message>

With --region it prints "region <name>" from botocore's own IMDS region provider (which reads
placement/availability-zone/) and stops.

Run it with Debian's /usr/bin/python3 (python3-boto3), not a pyenv interpreter.
"""

import argparse
import sys

import boto3
import botocore.config
import botocore.exceptions
import botocore.utils


def report(op, call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        print(op, "denied", e.response.get("Error", {}).get("Code", "unknown"))
    except Exception as e:  # noqa: BLE001 - any other failure is reported, not raised
        print(op, "error", str(e).replace("\n", " "))
    else:
        print(op, "ok")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", default=None, help="S3 endpoint")
    p.add_argument("--bucket", default="", help="bucket to read (key seed) and write")
    p.add_argument("--region", action="store_true", help="print the region botocore reads from IMDS, and stop")
    args = p.parse_args()

    session = boto3.session.Session()
    if args.region:
        region = botocore.utils.IMDSRegionProvider(session._session).provide()
        if not region:
            print("boto3: no region from the instance metadata service", file=sys.stderr)
            return 1
        print("region", region)
        return 0

    creds = session.get_credentials()
    if creds is None:
        print("boto3: no credentials found", file=sys.stderr)
        return 1
    frozen = creds.get_frozen_credentials()
    print("creds", creds.method, frozen.access_key, flush=True)
    if not args.bucket:
        return 0

    s3 = session.client(
        "s3",
        endpoint_url=args.endpoint,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )
    report("get", lambda: s3.get_object(Bucket=args.bucket, Key="seed")["Body"].read())
    report("put", lambda: s3.put_object(Bucket=args.bucket, Key="boto3", Body=b"hello"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
