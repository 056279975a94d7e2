"""A real S3 endpoint on loopback for tests: moto's server (`moto_server`) as a subprocess on a free
port, with authentication on, as s3fs's own test suite runs it (there without authentication).

Moto checks credentials only after its first INITIAL_NO_AUTH_ACTION_COUNT requests; `S3Server.start`
spends exactly those on creating one IAM user with full S3 rights and its access key (unauthenticated
requests, as an administrator would), so every later request needs that key: a wrong key is refused
as AWS refuses it (InvalidAccessKeyId).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
SETUP_REQUESTS = 3  # CreateUser, PutUserPolicy, CreateAccessKey
START_TIMEOUT_S = 60
S3_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    """One moto server process; `endpoint` is its URL, `key`/`secret` the credentials it accepts."""

    log_path: Path
    port: int = field(default_factory=free_port)
    key: str = ""
    secret: str = ""
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS),
               "AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_until_up()
        self._create_user()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:  # moto's own API: answers without counting as an AWS request
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {START_TIMEOUT_S}s")

    def _create_user(self) -> None:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="odbench")
        iam.put_user_policy(UserName="odbench", PolicyName="s3", PolicyDocument=json.dumps(S3_POLICY))
        access = iam.create_access_key(UserName="odbench")["AccessKey"]
        self.key, self.secret = access["AccessKeyId"], access["SecretAccessKey"]

    def client(self):
        """A boto3 S3 client with the accepted credentials (to create buckets and look inside them)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.key, aws_secret_access_key=self.secret)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
