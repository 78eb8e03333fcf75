"""An S3-protocol server for the object-store tests: moto's `ThreadedMotoServer` on 127.0.0.1,
reached only through the standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``),
as a user's own store would be."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

ENV = {"AWS_ACCESS_KEY_ID": "nsnet-test", "AWS_SECRET_ACCESS_KEY": "nsnet-test",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def s3_server() -> Iterator[str]:
    """Start the server, point this process's AWS environment at it (so child processes and a
    Ray started afterwards inherit it), yield the endpoint URL; undo it all afterwards. Skips
    when moto or boto3 is not installed (the dev extra has them)."""
    server_mod = pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")
    pytest.importorskip("boto3", reason="needs boto3 (installed with moto[server])")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def put_objects(bucket: str, objects: dict[str, bytes]) -> None:
    """Create ``bucket`` and upload ``objects`` (key → bytes) with a few parallel clients."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]),
                      objects.items()))
