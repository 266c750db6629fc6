"""A loopback stand-in for the Hugging Face Hub, for tests that point ``HF_ENDPOINT`` at it.

It implements the small part of the Hub's HTTP API that ``huggingface_hub`` 1.x uses for LeRobot's
``push_model_to_hub`` / processor ``push_to_hub`` and for ``hf_hub_download`` (model repos only):

=========================================================  =================================================
``POST /api/repos/create``                                 ``HfApi.create_repo`` (name, organization)
``POST /api/models/<repo>/preupload/<rev>``                upload modes: every file ``regular`` (no LFS / Xet)
``POST /api/models/<repo>/commit/<rev>``                   NDJSON commit: ``header``, ``file`` (base64),
                                                           ``deletedFile``
``GET  /api/models/<repo>[/revision/<rev>]``               ``model_info`` (sha, siblings)
``HEAD|GET /<repo>/resolve/<rev>/<path>``                  file metadata (``X-Repo-Commit``, ``ETag``,
                                                           ``Content-Length``) and content
``POST /api/validate-yaml``                                model-card metadata check (YAML front matter)
=========================================================  =================================================

Files live in memory, one linear history per repo (any revision name resolves to the head). Every request
is appended to ``HubEndpoint.requests`` as ``(method, path)``; anything else answers 404 and is listed in
``HubEndpoint.unhandled``. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

_REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class HubEndpoint:
    """``with HubEndpoint() as hub: env["HF_ENDPOINT"] = hub.url``."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.validated_cards: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- operations ----------------------------------------------------------------------------------------

    def create(self, repo_id: str) -> None:
        with self._lock:
            self.repos.setdefault(repo_id, Repo())

    def commit(self, repo_id: str, lines: list[dict]) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            h = hashlib.sha1(repo.sha.encode())
            for item in lines:
                key, value = item.get("key"), item.get("value", {})
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise ValueError(f"unsupported encoding {value.get('encoding')}")
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                    h.update(value["path"].encode() + repo.files[value["path"]])
                elif key == "deletedFile":
                    repo.files.pop(value["path"], None)
                    h.update(b"-" + value["path"].encode())
                elif key not in ("header",):
                    raise ValueError(
                        f"unsupported commit operation {key!r} (only regular files are stood in for)"
                    )
            repo.commits.append(h.hexdigest())
            return repo.sha


def _make_handler(hub: HubEndpoint):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet
            pass

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(code)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            hdrs.setdefault("Content-Length", str(len(body)))
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.end_headers()
            if body and not head:
                self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj).encode())

        def _not_found(self, code: str, head: bool = False) -> None:
            self._send(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code}, head=head)

        def _route(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((method, path))
            body = self._body() if method in ("POST", "PUT") else b""
            if method == "POST" and path == "/api/repos/create":
                req = json.loads(body)
                if req.get("type", "model") != "model":
                    return self._json(400, {"error": "only model repos are stood in for"})
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                hub.create(repo_id)
                return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            if method == "POST" and path == "/api/validate-yaml":
                content = json.loads(body)["content"]
                m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
                meta = yaml.safe_load(m.group(1)) if m else None
                if not isinstance(meta, dict):
                    return self._json(
                        400, {"errors": [{"message": "no YAML metadata block"}], "warnings": []}
                    )
                hub.validated_cards.append(content)
                return self._json(200, {"errors": [], "warnings": []})
            m = re.fullmatch(rf"/api/models/{_REPO}/(?P<op>preupload|commit)/(?P<rev>.+)", path)
            if method == "POST" and m:
                repo_id = m["repo"]
                if repo_id not in hub.repos:
                    return self._not_found("RepoNotFound")
                if m["op"] == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(
                        200,
                        {
                            "files": [
                                {
                                    "path": f["path"],
                                    "uploadMode": "regular",
                                    "shouldIgnore": False,
                                    "oid": None,
                                }
                                for f in files
                            ]
                        },
                    )
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                sha = hub.commit(repo_id, lines)
                return self._json(
                    200,
                    {
                        "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}",
                        "commitOid": sha,
                        "pullRequestUrl": None,
                    },
                )
            m = re.fullmatch(rf"/api/models/{_REPO}(/revision/(?P<rev>.+))?", path)
            if method == "GET" and m:
                repo = hub.repos.get(m["repo"])
                if repo is None:
                    return self._not_found("RepoNotFound")
                return self._json(
                    200,
                    {
                        "id": m["repo"],
                        "modelId": m["repo"],
                        "sha": repo.sha,
                        "private": False,
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                    },
                )
            m = re.fullmatch(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
            if method in ("HEAD", "GET") and m:
                head = method == "HEAD"
                repo = hub.repos.get(m["repo"])
                if repo is None:
                    return self._not_found("RepoNotFound", head)
                data = repo.files.get(m["file"])
                if data is None:
                    return self._not_found("EntryNotFound", head)
                etag = hashlib.sha256(data).hexdigest()
                return self._send(
                    200,
                    data,
                    {
                        "Content-Type": "application/octet-stream",
                        "X-Repo-Commit": repo.sha,
                        "ETag": f'"{etag}"',
                    },
                    head=head,
                )
            hub.unhandled.append((method, path))
            return self._not_found("NotImplementedByTestEndpoint", method == "HEAD")

        def do_GET(self):  # noqa: N802
            self._route("GET")

        def do_HEAD(self):  # noqa: N802
            self._route("HEAD")

        def do_POST(self):  # noqa: N802
            self._route("POST")

        def do_PUT(self):  # noqa: N802
            self._route("PUT")

    return Handler
