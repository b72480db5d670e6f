"""A small fake Hugging Face Hub on 127.0.0.1 for push tests (no network, no mocks inside huggingface_hub).

It answers the endpoints huggingface_hub 2.4 uses for ``create_repo`` + ``upload_folder`` and
``PreTrainedModel.push_to_hub`` (ecosystem.md §10): repo creation, YAML validation, pre-upload (every file
"regular", so no LFS / Xet round trips), and the NDJSON commit, whose base64 file contents it keeps in memory.
Everything else gets a 404, which is what the real Hub says for a missing file or repo.

```python
with FakeHub() as hub:
    subprocess.run([...], env=hub.client_env(), check=True)  # huggingface_hub must be imported with this env
    hub.files("me/model")["README.md"]  # bytes received
```
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

FAKE_TOKEN = "hf_fake"

#: Upper bound for one request body, so a broken client cannot make the test server read forever.
MAX_BODY_BYTES = 256 * 1024 * 1024
#: Upper bound on chunks of one chunked request body.
MAX_CHUNKS = 1_000_000

_REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"
_ROUTES: List[Tuple[str, "re.Pattern[str]", str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    # What `datasets.Dataset.push_to_hub` reads besides the above: repo info (with the head sha), and the repo's
    # file listing through HfFileSystem (tree, paths-info) to find shards to replace and an existing card.
    ("GET", re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    ("GET", re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
     "tree"),
    ("POST", re.compile(rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}/paths-info/(?P<rev>[^/]+)$"),
     "paths_info"),
    # Git LFS (basic transfer) for the suffixes in FakeHub.lfs_suffixes: the batch call, then an unauthenticated
    # PUT of the bytes, as the real storage URL; the commit then names the object by its sha256.
    ("POST", re.compile(r"^/(?:(?:datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?|[^/]+?)\.git/info/lfs/objects/batch$"),
     "lfs_batch"),
    ("PUT", re.compile(r"^/fake-lfs-storage/(?P<oid>[0-9a-f]{64})$"), "lfs_upload"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class FakeHub:
    """Context manager running the fake Hub in a background thread on a free port of 127.0.0.1."""

    def __init__(
        self,
        token: str = FAKE_TOKEN,
        fail: Optional[Dict[str, int]] = None,
        lfs_suffixes: Tuple[str, ...] = (".parquet",),
        yaml_errors: Tuple[str, ...] = (),
    ) -> None:
        self.token = token
        #: Messages the YAML check answers with (HTTP 400, as the Hub refuses a card's metadata); none: it passes.
        self.yaml_errors = yaml_errors
        #: Files with these suffixes go through Git LFS (as the Hub does for parquet); everything else "regular".
        self.lfs_suffixes = lfs_suffixes
        #: LFS objects received: sha256 hex -> bytes.
        self.lfs_objects: Dict[str, bytes] = {}
        #: Endpoint name ("create_repo", "preupload", "commit", ...) -> HTTP status to answer it with instead.
        self.fail: Dict[str, int] = dict(fail or {})
        #: Every request as (method, path), in arrival order.
        self.requests: List[Tuple[str, str]] = []
        #: Every commit as {"repo_id", "revision", "summary", "files": {path: bytes}}.
        self.commits: List[Dict[str, Any]] = []
        self.created_repos: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "use FakeHub as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_env(self, base: Optional[Dict[str, str]] = None, token: Optional[str] = FAKE_TOKEN) -> Dict[str, str]:
        """Environment for a subprocess whose huggingface_hub should talk to this server (set before import)."""
        env = dict(os.environ if base is None else base)
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_TOKEN", None)
        env["HF_ENDPOINT"] = self.endpoint
        # The legacy commit path; the Xet path would ask for Xet tokens this server does not hand out.
        env["HF_HUB_DISABLE_XET"] = "1"
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    # -- what was received -----------------------------------------------------------------------------------
    def files(self, repo_id: str) -> Dict[str, bytes]:
        """The repo's current files (all commits applied in order): path -> bytes."""
        result: Dict[str, bytes] = {}
        with self._lock:
            for commit in self.commits:
                if commit["repo_id"] == repo_id:
                    result.update(commit["files"])
                    for path in commit["deleted"]:
                        result.pop(path, None)
        return result

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing --------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self.fake_hub._record(method, path)
        body = self._read_body()
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                if method != "HEAD" and name not in ("resolve", "lfs_upload") and not self._authorized():
                    return self._json(401, {"error": "Invalid credentials in Authorization header"})
                if name in self.fake_hub.fail:
                    return self._json(self.fake_hub.fail[name], {"error": f"fake hub told to fail {name}"})
                return getattr(self, "_" + name)(match.groupdict(), body, method)
        self._json(404, {"error": f"{method} {path} not found (fake hub)"}, error_code="EntryNotFound")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            for _ in range(MAX_CHUNKS):
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline(1024)  # blank line after the last chunk (no trailers from httpx)
                    break
                data += self.rfile.read(size)
                self.rfile.readline(1024)
                if len(data) > MAX_BODY_BYTES:
                    raise ValueError("request body too large for the fake hub")
            body = bytes(data)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise ValueError("request body too large for the fake hub")
            body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.fake_hub.token}"

    def _json(self, status: int, payload: Any, error_code: Optional[str] = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", payload.get("error", ""))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- endpoints -------------------------------------------------------------------------------------------
    def _create_repo(self, params: Dict[str, str], body: bytes, method: str) -> None:
        request = json.loads(body or b"{}")
        repo_id = request["name"] if not request.get("organization") else f"{request['organization']}/{request['name']}"
        with self.fake_hub._lock:
            self.fake_hub.created_repos.append({"repo_id": repo_id, **request})
        self._json(200, {"url": f"{self.fake_hub.endpoint}/{repo_id}", "name": repo_id, "id": f"fake-{repo_id}"})

    def _validate_yaml(self, params: Dict[str, str], body: bytes, method: str) -> None:
        if self.fake_hub.yaml_errors:
            return self._json(400, {"error": "Invalid metadata", "errors": [
                {"message": message} for message in self.fake_hub.yaml_errors]})
        self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, params: Dict[str, str], body: bytes, method: str) -> None:
        files = json.loads(body or b"{}").get("files", [])
        # "regular" for everything: contents then travel base64 in the commit payload, no LFS / Xet round trips.
        self._json(
            200,
            {"files": [{"path": f["path"], "shouldIgnore": False,
                        "uploadMode": "lfs" if f["path"].endswith(self.fake_hub.lfs_suffixes) else "regular"}
                       for f in files]},
        )

    def _commit(self, params: Dict[str, str], body: bytes, method: str) -> None:
        header: Dict[str, Any] = {}
        files: Dict[str, bytes] = {}
        deleted: List[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                is_base64 = value.get("encoding") == "base64"
                files[value["path"]] = base64.b64decode(content) if is_base64 else content.encode()
            elif key == "lfsFile":
                with self.fake_hub._lock:
                    content = self.fake_hub.lfs_objects.get(value["oid"])
                if content is None:
                    return self._json(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                files[value["path"]] = content
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                return self._json(400, {"error": f"fake hub cannot handle commit item {key!r}"})
        oid = hashlib.sha1(body).hexdigest()
        repo_id = params["repo"]
        with self.fake_hub._lock:
            self.fake_hub.commits.append(
                {
                    "repo_id": repo_id,
                    "revision": params["rev"],
                    "summary": header.get("summary"),
                    "files": files,
                    "deleted": deleted,
                }
            )
        self._json(
            200,
            {"commitUrl": f"{self.fake_hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
        )

    def _lfs_batch(self, params: Dict[str, str], body: bytes, method: str) -> None:
        request = json.loads(body or b"{}")
        objects = []
        for obj in request.get("objects", []):
            with self.fake_hub._lock:
                present = obj["oid"] in self.fake_hub.lfs_objects
            href = f"{self.fake_hub.endpoint}/fake-lfs-storage/{obj['oid']}"
            actions = {} if present else {"actions": {"upload": {"href": href}}}  # no actions: already stored
            objects.append({"oid": obj["oid"], "size": obj["size"], **actions})
        self._json(200, {"transfer": "basic", "objects": objects})

    def _lfs_upload(self, params: Dict[str, str], body: bytes, method: str) -> None:
        if hashlib.sha256(body).hexdigest() != params["oid"]:
            return self._json(400, {"error": "sha256 of the body does not match the object id"})
        with self.fake_hub._lock:
            self.fake_hub.lfs_objects[params["oid"]] = body
        self._json(200, {})

    def _known(self, repo_id: str) -> bool:
        with self.fake_hub._lock:
            return any(r["repo_id"] == repo_id for r in self.fake_hub.created_repos) or any(
                c["repo_id"] == repo_id for c in self.fake_hub.commits
            )

    def _head_sha(self, repo_id: str) -> str:
        with self.fake_hub._lock:
            count = sum(1 for c in self.fake_hub.commits if c["repo_id"] == repo_id)
        return hashlib.sha1(f"{repo_id}@{count}".encode()).hexdigest()

    def _entry(self, path: str, content: bytes) -> Dict[str, Any]:
        return {"type": "file", "path": path, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}

    def _repo_info(self, params: Dict[str, str], body: bytes, method: str) -> None:
        repo_id = params["repo"]
        if not self._known(repo_id):
            return self._json(404, {"error": f"Repository {repo_id} not found"}, error_code="RepoNotFound")
        siblings = [{"rfilename": path} for path in sorted(self.fake_hub.files(repo_id))]
        with self.fake_hub._lock:  # as the Hub: the visibility the repo was created with (later requests keep it)
            private = next((r.get("visibility") == "private" or bool(r.get("private"))
                            for r in self.fake_hub.created_repos if r["repo_id"] == repo_id), False)
        self._json(200, {"id": repo_id, "sha": self._head_sha(repo_id), "private": private, "siblings": siblings})

    def _tree(self, params: Dict[str, str], body: bytes, method: str) -> None:
        if not self._known(params["repo"]):
            return self._json(404, {"error": "Repository not found"}, error_code="RepoNotFound")
        from urllib.parse import parse_qs, urlsplit

        prefix = (params.get("path") or "").strip("/")
        recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path, content in sorted(self.fake_hub.files(params["repo"]).items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            if "/" in rest and not recursive:  # one level: sub-folders as directory entries (recursive: every file)
                folders.add(f"{prefix}/{rest.split('/')[0]}" if prefix else rest.split("/")[0])
            else:
                entries.append(self._entry(path, content))
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40, "size": 0} for folder in sorted(folders)]
        if prefix and not entries:  # as the Hub: a folder that does not exist is a 404, not an empty listing
            return self._json(404, {"error": f"{prefix} not found"}, error_code="EntryNotFound")
        self._json(200, entries)

    def _paths_info(self, params: Dict[str, str], body: bytes, method: str) -> None:
        from urllib.parse import parse_qs

        fields = parse_qs(body.decode()) if body and not body.startswith(b"{") else {}
        paths = fields.get("paths") or json.loads(body or b"{}").get("paths", [])
        files = self.fake_hub.files(params["repo"])
        found = [self._entry(path, files[path]) for path in paths if path in files]
        folders = [{"type": "directory", "path": path, "oid": "0" * 40, "size": 0} for path in paths
                   if path not in files and any(name.startswith(path.rstrip("/") + "/") for name in files)]
        self._json(200, found + folders)

    def _resolve(self, params: Dict[str, str], body: bytes, method: str) -> None:
        content = self.fake_hub.files(params["repo"]).get(params["path"])
        if content is None:
            return self._json(404, {"error": "Entry not found"}, error_code="EntryNotFound")
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", '"' + hashlib.sha1(content).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(content)
