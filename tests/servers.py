"""Real servers on 127.0.0.1 for the remote-data tests: nginx serving files over HTTP (range requests;
every request's bytes in its access log, counted on the server side) and moto's standalone S3 server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import missing

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
{user}
events {{ worker_connections 64; }}
http {{
  log_format counted '$request_method $uri $status $body_bytes_sent "$http_range"';
  access_log {tmp}/access.log counted;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  types {{ image/tiff tif; application/json json; text/plain txt md; }}
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location /forbidden/ {{ return 403; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class HttpServer:
    url: str  # http://127.0.0.1:PORT
    root: Path  # files served (symlinks to the samples are followed)
    log: Path

    def mark(self) -> int:
        """The access log's length now: `bytes_since(mark)` counts what was served after it."""
        return self.log.stat().st_size if self.log.exists() else 0

    def requests_since(self, mark: int) -> list[tuple[str, str, int, int, str]]:
        """(method, path, status, body bytes, Range header) of every request after `mark`."""
        with open(self.log, "rb") as f:
            f.seek(mark)
            lines = f.read().decode().splitlines()
        rows = []
        for line in lines:
            method, uri, status, size, ranges = line.split(" ", 4)
            rows.append((method, uri, int(status), int(size), ranges.strip('"')))
        return rows

    def bytes_since(self, mark: int, path: str | None = None) -> int:
        return sum(r[3] for r in self.requests_since(mark) if path is None or r[1] == path)


@contextlib.contextmanager
def nginx(root: Path, tmp: Path) -> Iterator[HttpServer]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        missing("nginx is not installed (apt-get install nginx-light): the HTTP range-request tests need it")
    port = free_port()
    user = "user root root;" if os.geteuid() == 0 else ""  # as root, workers would drop to nobody: keep our user
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, root=root, port=port, user=user))
    proc = subprocess.Popen([binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # errors: error.log
    try:
        _wait_listening(port, proc, "nginx")
        yield HttpServer(f"http://127.0.0.1:{port}", root, tmp / "access.log")
    finally:
        _stop(proc)


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # what a client needs: the endpoint and (fake) credentials

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": self.endpoint},
                                 skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        self.fs().mkdir(name)
        return name

    def keys(self, bucket: str) -> list[str]:
        return sorted(k.split("/", 1)[1] for k in self.fs().find(bucket))


@contextlib.contextmanager
def moto_server(tmp: Path) -> Iterator[S3Server]:
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        missing('moto[server] and s3fs are not installed: pip install "segunify[dev,cloud]"')
    port = free_port()
    with open(tmp / "moto.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        _wait_listening(port, proc, "moto_server")
        endpoint = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(endpoint, timeout=30).close()  # the app answers, not only the socket
        yield S3Server(endpoint, {**S3_KEYS, "AWS_ENDPOINT_URL": endpoint})
    finally:
        _stop(proc)
