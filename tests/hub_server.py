"""A Hugging Face hub on 127.0.0.1 for download tests, in the hub's own URL layout.

What huggingface_hub 2.4 asks and reads (hf_api.py, file_download.py, utils/_pagination.py):

    GET  /api/models/<repo>[/revision/<rev>]?blobs=true  model info: sha, siblings with
                                                   size, blobId and lfs {sha256, size}
    GET  /api/models?search=&filter=&sort=&limit=&expand=   a search (one page, no Link)
    HEAD/GET /<repo>/resolve/<rev>/<file>          small files: ETag (git blob id),
                                                   X-Repo-Commit, Content-Length; LFS
                                                   files: 302 to /cdn/<sha256> with
                                                   X-Linked-Etag and X-Linked-Size
    GET  /cdn/<sha256>                              bytes, HTTP Range (206 + Content-Range)

A repository file may announce a size it does not have (`announce`), to test the free
space check without writing terabytes, or be `damaged` in transit; `throttle_s` slows every 64 KiB so a test can
kill a download half-way; every body sent is logged with its Range header.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".pt")
SEND_CHUNK = 64 << 10


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RepoFile:
    path: str
    data: bytes
    announce: int | None = None  # the size the listing claims, if not the real one
    damaged: bool = False  # the bytes sent end differently from what the listing says

    @property
    def served(self) -> bytes:
        return self.data[:-10] + b"0123456789" if self.damaged else self.data

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return self.announce if self.announce is not None else len(self.data)

    def sibling(self) -> dict:
        entry = {"rfilename": self.path, "size": self.size, "blobId": git_blob_id(self.data)}
        if self.lfs:
            entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": 134}
        return entry


@dataclass
class Repo:
    repo_id: str
    files: list[RepoFile]
    sha: str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
    tags: list[str] = field(default_factory=list)
    downloads: int = 0
    config: dict | None = None
    gguf: dict | None = None

    def info(self, expand: list[str] | None = None) -> dict:
        data = {
            "id": self.repo_id,
            "sha": self.sha,
            "downloads": self.downloads,
            "likes": 0,
            "tags": self.tags,
            "usedStorage": sum(f.size for f in self.files),
            "siblings": [f.sibling() for f in self.files],
        }
        if self.config:
            data["config"] = self.config
        if self.gguf:
            data["gguf"] = self.gguf
        if expand:  # the hub returns only what `expand` names, plus the id
            data = {k: v for k, v in data.items() if k in expand or k == "id"}
        return data


@dataclass
class Sent:
    path: str
    range: str
    bytes: int


class HubServer:
    def __init__(self, repos: list[Repo], throttle_s: float = 0.0):
        self.repos = {r.repo_id: r for r in repos}
        self.throttle_s = throttle_s
        self.sent: list[Sent] = []
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def bytes_sent(self, name: str, open_ended_only: bool = True) -> int:
        """Bytes of file `name` sent; by default only downloads (`bytes=N-`), not the
        header probes a fit verdict makes (`bytes=0-N`)."""
        return sum(
            s.bytes
            for s in self.sent
            if s.path == name and (not open_ended_only or s.range.endswith("-") or not s.range)
        )

    def file(self, sha256: str) -> RepoFile | None:
        return next(
            (f for r in self.repos.values() for f in r.files if f.lfs and f.sha256 == sha256), None
        )

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._route(body=False)

            def do_GET(self):
                self._route(body=True)

            def _route(self, body: bool):
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.requests.append(f"{self.command} {self.path}")
                if path == "/api/models":
                    return self._search(parse_qs(url.query))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?", path):
                    repo = hub.repos.get(m[1])
                    return self._json(repo.info() if repo else None)
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._resolve(m[1], m[2], m[3], body)
                if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
                    f = hub.file(m[1])
                    return self._bytes(f, body) if f else self._missing()
                return self._missing()

            def _json(self, data, status: int = 200):
                if data is None:
                    return self._missing()
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _missing(self):
                raw = b'{"error": "Repository not found"}'
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _search(self, query: dict):
                text = (query.get("search") or [""])[0].lower()
                filters = query.get("filter", [])
                expand = query.get("expand")
                found = [
                    r
                    for r in hub.repos.values()
                    if text in r.repo_id.lower() and all(f in r.tags for f in filters)
                ]
                if (query.get("sort") or [""])[0] == "downloads":
                    found.sort(key=lambda r: -r.downloads)
                limit = int((query.get("limit") or ["1000"])[0])
                self._json([r.info(expand) for r in found[:limit]])

            def _resolve(self, repo_id: str, revision: str, name: str, body: bool):
                repo = hub.repos.get(repo_id)
                f = next((f for f in repo.files if f.path == name), None) if repo else None
                if f is None or revision not in (repo.sha, "main"):
                    return self._missing()
                if f.lfs:  # the hub sends LFS files on from its CDN
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{f.sha256}")
                    self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                    self.send_header("X-Linked-Size", str(f.size))
                    self.send_header("X-Repo-Commit", repo.sha)
                    self.send_header("ETag", f'"{git_blob_id(f.data)}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._bytes(f, body, repo.sha)

            def _bytes(self, f: RepoFile, body: bool, commit: str = ""):
                data = f.served
                start, end = 0, len(data) - 1
                header = self.headers.get("Range", "")
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", header)
                if ranged:
                    start = int(ranged[1])
                    end = min(int(ranged[2]), end) if ranged[2] else end
                self.send_response(206 if ranged else 200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{f.sha256 if f.lfs else git_blob_id(f.data)}"')
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if not body:
                    return
                sent = 0
                try:
                    for at in range(start, end + 1, SEND_CHUNK):
                        piece = data[at : min(at + SEND_CHUNK, end + 1)]
                        self.wfile.write(piece)
                        sent += len(piece)
                        if hub.throttle_s:
                            time.sleep(hub.throttle_s)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away (cancelled, killed)
                finally:
                    hub.sent.append(Sent(f.path, header, sent))

        return Handler


def files_from(folder: Path, prefix: str = "") -> list[RepoFile]:
    return [
        RepoFile(prefix + p.relative_to(folder).as_posix(), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
