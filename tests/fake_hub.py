"""A minimal fake Hugging Face Hub on 127.0.0.1, for testing `push_to_hub` end to end without the network.

It implements what `huggingface_hub` 2.4 calls when `transformers.Trainer.push_to_hub` runs `create_repo` and
`upload_folder`, and records every file of every commit:

- ``POST /api/repos/create``: records the request (repo id, visibility); 409 with the URL when the repo exists.
- ``POST /api/validate-yaml``: the README metadata check `upload_folder` runs first; always valid.
- ``POST /api/{type}s/{repo}/preupload/{rev}``: the upload mode of each file. Files whose name ends with one of
  ``lfs_suffixes`` are answered ``lfs``, the others ``regular`` (sent inline, base64, in the commit).
- ``POST /{repo}.git/info/lfs/objects/batch``: the LFS batch API, answered with ``"transfer": "basic"`` and upload
  and verify hrefs on this server (no Xet headers): ``PUT /_lfs/{oid}`` and ``POST /_lfs/verify/{oid}``.
- ``POST /api/{type}s/{repo}/commit/{rev}``: the ndjson commit; inline files are decoded, LFS files are looked up
  by their sha256 among the uploaded LFS objects (an unknown oid is refused, as the Hub does).
- ``GET /api/{type}s/{repo}[/revision/{rev}]`` (repo / model info) and ``GET /api/whoami-v2``.
- ``GET /api/agent-harnesses`` (user-agent detection) is answered 404 and ``/api/telemetry/...`` 200; neither is
  an "unknown" request (`point_hub_at` turns telemetry off anyway).

With `hf_xet` installed, `upload_folder` takes the streamed pipeline, which sends every ``lfs`` file through Xet
storage (not implemented here), so keep ``lfs_suffixes`` empty there: everything is committed inline. The LFS basic
transfer is the path taken with Xet disabled (``HF_HUB_DISABLE_XET=1`` or `hf_xet` missing).

Any other request is answered 404 with a JSON error naming it, logged on stderr and kept in `unknown_requests`,
so a failing test says which endpoint the client wanted. A token in `rejected_tokens` (or a missing token) gets
401 on the ``/api`` and ``.git`` endpoints. With ``scan_secrets``, a commit whose files contain a token the
server was sent is refused with 400, as the Hub's secret scanner does.
"""

import base64
import hashlib
import json
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


REPO_TYPES = ("models", "datasets", "spaces")
_API_REPO = re.compile(r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+|[^/]+)(?P<rest>/.*)?$")
_LFS_BATCH = re.compile(r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")


@dataclass
class Commit:
    repo_id: str
    repo_type: str
    revision: str
    summary: str
    oid: str
    files: dict[str, bytes] = field(default_factory=dict)  # path in repo -> content
    deleted: list[str] = field(default_factory=list)


class FakeHub:
    """Start with `start()` (or as a context manager); `url` is the endpoint to put in ``HF_ENDPOINT``."""

    def __init__(
        self,
        *,
        user: str = "me",
        lfs_suffixes: tuple[str, ...] = (),
        rejected_tokens: tuple[str, ...] = (),
        require_token: bool = True,
        scan_secrets: bool = False,
    ):
        self.user = user
        self.lfs_suffixes = tuple(lfs_suffixes)
        self.rejected_tokens = set(rejected_tokens)
        self.require_token = require_token
        self.scan_secrets = scan_secrets
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.created_repos: list[dict] = []  # bodies of the repo-creation requests
        self.commits: list[Commit] = []
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}  # (type, repo id) -> current files
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content uploaded through LFS
        self.lfs_batches: list[dict] = []  # bodies of the LFS batch requests
        self.unknown_requests: list[str] = []
        self.handler_errors: list[str] = []
        self.rejected_requests: list[str] = []
        self.tokens_seen: set[str | None] = set()  # tokens of the requests that needed one
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """The files of the repo after all commits (path -> content)."""
        with self.lock:
            return dict(self.repos.get((repo_type, repo_id), {}))

    def uploaded(self, repo_id: str | None = None) -> dict[str, bytes]:
        """Every file uploaded in any commit (to `repo_id`, if given); a later upload of a path wins."""
        with self.lock:
            result: dict[str, bytes] = {}
            for commit in self.commits:
                if repo_id is None or commit.repo_id == repo_id:
                    result.update(commit.files)
            return result

    def describe(self) -> str:
        """A summary for assertion messages."""
        with self.lock:
            lines = [f"requests: {self.requests}"]
            if self.unknown_requests:
                lines.append(f"UNKNOWN: {self.unknown_requests}")
            if self.handler_errors:
                lines.append(f"HANDLER ERRORS: {self.handler_errors}")
            return "\n".join(lines)

    # ------------------------------------------------------------------ state changes (under the lock)

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.url}/{prefix}{repo_id}"

    def _commit(self, commit: Commit) -> None:
        files = self.repos.setdefault((commit.repo_type, commit.repo_id), {".gitattributes": b""})
        for path in commit.deleted:
            if path.endswith("/"):
                for name in [name for name in files if name.startswith(path)]:
                    del files[name]
            else:
                files.pop(path, None)
        files.update(commit.files)
        self.commits.append(commit)


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads left behind
    server_version = "FakeHub/1.0"

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format, *args):  # quiet: the hub records requests itself
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Message": message})

    def _authorized(self) -> bool:
        hub = self.fake_hub
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        with hub.lock:
            hub.tokens_seen.add(token)
        if token is None and hub.require_token:
            message = "Fake hub: this endpoint needs a token (no Authorization header)"
        elif token is not None and token in hub.rejected_tokens:
            message = "Invalid credentials in Authorization header"
        else:
            return True
        with hub.lock:
            hub.rejected_requests.append(f"{self.command} {self.path}")
        self._error(401, message)
        return False

    def _dispatch(self) -> None:
        hub = self.fake_hub
        path = urlsplit(self.path).path
        with hub.lock:
            hub.requests.append((self.command, path))
        try:
            if not self._route(path):
                body = self._body()
                message = f"fake hub: no handler for {self.command} {self.path}"
                with hub.lock:
                    hub.unknown_requests.append(f"{self.command} {self.path} body={body[:200]!r}")
                print(f"[fake_hub] UNKNOWN REQUEST {self.command} {self.path} body={body[:200]!r}", file=sys.stderr)
                self._error(404, message)
        except Exception as error:  # report instead of dropping the connection
            with hub.lock:
                hub.handler_errors.append(f"{self.command} {self.path}: {type(error).__name__}: {error}")
            print(f"[fake_hub] handler error on {self.command} {self.path}: {error!r}", file=sys.stderr)
            try:
                self._error(500 if not isinstance(error, ValueError) else 400, f"fake hub: {error}")
            except OSError:
                pass

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    # ------------------------------------------------------------------ routes

    def _route(self, path: str) -> bool:
        method = self.command
        if method == "POST" and path == "/api/repos/create":
            if self._authorized():
                self._create_repo()
            return True
        if method == "POST" and path == "/api/validate-yaml":
            if self._authorized():
                self._json_body()
                self._send(200, {"errors": [], "warnings": []})
            return True
        if method == "GET" and path == "/api/agent-harnesses":
            # huggingface_hub's user-agent detection; optional (a failure is ignored), and an answer would be
            # cached under HF_HOME, so say "not here" without counting it as an unknown endpoint.
            self._error(404, "fake hub: no agent-harnesses registry")
            return True
        if path.startswith("/api/telemetry/"):  # `point_hub_at` turns telemetry off; answer anyway if it comes
            self._send(200, {})
            return True
        if method == "GET" and path == "/api/whoami-v2":
            if self._authorized():
                name = self.fake_hub.user
                self._send(200, {"type": "user", "name": name, "fullname": name, "orgs": [], "auth": {}})
            return True
        if method == "PUT" and path.startswith("/_lfs/upload/"):
            self._lfs_put(path.rsplit("/", 1)[-1])
            return True
        if method == "POST" and path.startswith("/_lfs/verify/"):
            self._lfs_verify(path.rsplit("/", 1)[-1])
            return True
        match = _LFS_BATCH.match(path)
        if match and method == "POST":
            if self._authorized():
                self._lfs_batch(unquote(match["repo"]))
            return True
        match = _API_REPO.match(path)
        if match:
            repo_type = match["type"][:-1]
            repo_id = unquote(match["repo"])
            rest = match["rest"] or ""
            if method == "POST" and rest.startswith("/preupload/"):
                if self._authorized():
                    self._preupload(repo_type, repo_id)
                return True
            if method == "POST" and rest.startswith("/commit/"):
                if self._authorized():
                    self._create_commit(repo_type, repo_id, unquote(rest[len("/commit/") :]))
                return True
            if method == "GET" and (rest == "" or rest.startswith("/revision/")):
                if self._authorized():
                    self._repo_info(repo_type, repo_id)
                return True
        return False

    def _create_repo(self) -> None:
        hub = self.fake_hub
        payload = self._json_body()
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization or hub.user}/{name}"
        with hub.lock:
            hub.created_repos.append(payload)
            url = hub._repo_url(repo_type, repo_id)
            if (repo_type, repo_id) in hub.repos:
                self._send(409, {"error": "You already created this model repo", "url": url})
                return
            hub.repos[(repo_type, repo_id)] = {".gitattributes": b""}
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str) -> None:
        hub = self.fake_hub
        with hub.lock:
            files = hub.repos.get((repo_type, repo_id))
            commits = [commit for commit in hub.commits if commit.repo_id == repo_id]
        if files is None:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return
        sha = commits[-1].oid if commits else "0" * 40
        self._send(
            200,
            {
                "id": repo_id,
                "_id": repo_id,
                "sha": sha,
                "private": False,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            },
        )

    def _preupload(self, repo_type: str, repo_id: str) -> None:
        hub = self.fake_hub
        payload = self._json_body()
        with hub.lock:
            existing = hub.repos.get((repo_type, repo_id), {})
        answers = []
        for entry in payload.get("files", []):
            path = entry["path"]
            mode = "lfs" if path.endswith(hub.lfs_suffixes) and hub.lfs_suffixes else "regular"
            oid = None
            if path in existing:  # git blob sha1 for regular files, sha256 for LFS ones (as the Hub does)
                content = existing[path]
                if mode == "lfs":
                    oid = hashlib.sha256(content).hexdigest()
                else:
                    oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": answers, "commitOid": "0" * 40})

    def _lfs_batch(self, repo_id: str) -> None:
        hub = self.fake_hub
        payload = self._json_body()
        with hub.lock:
            hub.lfs_batches.append(payload)
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            with hub.lock:
                present = oid in hub.lfs_objects
            answer = {"oid": oid, "size": size, "authenticated": True}
            if not present:
                answer["actions"] = {
                    "upload": {"href": f"{hub.url}/_lfs/upload/{oid}"},
                    "verify": {"href": f"{hub.url}/_lfs/verify/{oid}"},
                }
            objects.append(answer)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str) -> None:
        body = self._body()
        actual = hashlib.sha256(body).hexdigest()
        if actual != oid:
            self._error(400, f"fake hub: LFS upload sha256 {actual} does not match {oid}")
            return
        with self.fake_hub.lock:
            self.fake_hub.lfs_objects[oid] = body
        self._send(200, {})

    def _lfs_verify(self, oid: str) -> None:
        payload = self._json_body()
        with self.fake_hub.lock:
            content = self.fake_hub.lfs_objects.get(oid)
        if content is None or payload.get("size") not in (None, len(content)):
            self._error(404, f"fake hub: LFS object {oid} was not uploaded")
            return
        self._send(200, {})

    def _create_commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.fake_hub
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        with hub.lock:
            if (repo_type, repo_id) not in hub.repos:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
        summary = ""
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines:
            key, value = line.get("key"), line.get("value", {})
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError(f"unsupported encoding {value.get('encoding')!r} for {value.get('path')}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                with hub.lock:
                    content = hub.lfs_objects.get(value["oid"])
                if content is None:
                    self._error(400, f"fake hub: LFS file {value['path']} ({value['oid']}) was never uploaded")
                    return
                files[value["path"]] = content
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"] + ("/" if key == "deletedFolder" else ""))
            else:
                raise ValueError(f"unknown commit operation {key!r}")
        if hub.scan_secrets:
            with hub.lock:
                secrets = [token.encode() for token in hub.tokens_seen if token]
            leaks = sorted(path for path, content in files.items() if any(secret in content for secret in secrets))
            if leaks:
                self._error(
                    400,
                    "Bad request for commit endpoint: It appears that one or more of your files contain valid "
                    f"Hugging Face secrets, such as tokens or API keys: {leaks}",
                )
                return
        oid = hashlib.sha1(json.dumps(lines, sort_keys=True).encode() + str(len(hub.commits)).encode()).hexdigest()
        commit = Commit(repo_id, repo_type, revision, summary, oid, files, deleted)
        with hub.lock:
            hub._commit(commit)
            url = hub._repo_url(repo_type, repo_id)
        answer = {"success": True, "commitOid": oid, "commitUrl": f"{url}/commit/{oid}", "pullRequestUrl": None}
        self._send(200, answer)


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a port just freed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def point_hub_at(monkeypatch, url: str, token: str = "hf_fake_token") -> None:
    """Make `huggingface_hub` and transformers' `Trainer` talk to `url`, online, with `token` (undone after the test).

    `huggingface_hub` reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import, into `constants`; `HfApi`
    instances copy the endpoint when built: the module-level one behind `huggingface_hub.create_repo` and
    transformers' shared `hf_api()` instance (used by `Trainer.init_hf_repo` and `Trainer.push_to_hub`).
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api_module
    import transformers.utils.hub as transformers_hub

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Online, TRL's trainers send a telemetry ping from a background thread (offline mode had blocked it).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_api_module.api, "endpoint", url)
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # rebuilt on first use, with the patched endpoint
