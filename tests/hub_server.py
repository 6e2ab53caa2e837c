"""A tiny stand-in for the Hugging Face hub HTTP API on 127.0.0.1, for push tests.

It implements only the endpoints ``huggingface_hub`` 2.4 calls for ``create_repo``,
``create_branch`` and ``upload_folder`` with small files (read from its source:
``hf_api.py`` ``create_repo``/``create_branch``/``_validate_yaml``, ``_commit_api.py``
``_fetch_upload_modes``/``_send_commit``): every file is answered ``uploadMode: regular``, so
the contents travel base64-encoded inside the NDJSON commit. Each request is recorded
(method, path, query, headers, parsed body) for the test to assert on.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class HubStub:
    requests: list[Request] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    url: str = ""

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]


def _repo(path: str) -> str:
    """``/api/models/ORG/NAME/...`` -> ``ORG/NAME``."""
    return "/".join(path.split("/api/models/")[1].split("/")[:2])


def start_hub_stub() -> tuple[HubStub, ThreadingHTTPServer]:
    stub = HubStub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

        def _reply(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if "ndjson" in (self.headers.get("Content-Type") or ""):
                body: Any = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                body = json.loads(raw) if raw else None
            stub.requests.append(
                Request("POST", parts.path, parse_qs(parts.query), dict(self.headers), body)
            )
            path = parts.path
            if path == "/api/repos/create":
                org, name = body.get("organization"), body["name"]
                self._reply(
                    200, {"url": f"{stub.url}/{org}/{name}" if org else f"{stub.url}/{name}"}
                )
            elif path == "/api/validate-yaml":
                self._reply(200, {"errors": [], "warnings": []})
            elif "/branch/" in path:
                self._reply(200, {})
            elif path.endswith("/discussions"):  # create_pr: the pull request comes first
                self._reply(200, {"num": 1, "url": f"{stub.url}/{_repo(path)}/discussions/1"})
            elif "/preupload/" in path:
                files = [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in body["files"]
                ]
                self._reply(200, {"files": files})
            elif "/commit/" in path:
                for item in body:
                    if item.get("key") == "file":
                        value = item["value"]
                        stub.files[value["path"]] = base64.b64decode(value["content"])
                repo = _repo(path)
                pr = "create_pr" in parts.query
                self._reply(
                    200,
                    {
                        "commitUrl": f"{stub.url}/{repo}/commit/0123abcd",
                        "commitOid": "0123abcd" * 5,
                        "pullRequestUrl": f"{stub.url}/{repo}/discussions/1" if pr else None,
                    },
                )
            else:
                self._reply(404, {"error": f"not implemented: {path}"})

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            stub.requests.append(
                Request("GET", parts.path, parse_qs(parts.query), dict(self.headers), None)
            )
            if "/discussions/" in parts.path:  # the pull request just created
                repo = _repo(parts.path)
                self._reply(
                    200,
                    {"title": "pr", "num": 1, "author": {"name": "me"},
                     "createdAt": "2026-01-01T00:00:00.000Z", "status": "open",
                     "repo": {"name": repo, "type": "model"}, "isPullRequest": True,
                     "events": [], "changes": {"base": "refs/heads/main"},
                     "filesWithConflicts": []},
                )  # fmt: skip
            else:
                self._reply(404, {"error": f"not implemented: {parts.path}"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return stub, server
