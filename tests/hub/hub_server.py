"""A small Hugging Face Hub stand-in on 127.0.0.1 that the real huggingface_hub client can talk to.

It speaks the HTTP endpoints that huggingface_hub 2.x calls:
repo create (with an initial commit holding .gitattributes, as the Hub does), repo info, model
listing, validate-yaml, preupload, the LFS batch API plus PUT with a sha256 check, NDJSON commits,
tree, paths-info, and resolve (HEAD/GET) with X-Repo-Commit, ETag, Content-Length and the LFS
X-Linked-* headers; errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound).
Each commit is a full snapshot of the repo's files, addressed by a 40-hex sha; a revision is a
branch name ("main", "dev"), a pull request ref ("refs/pr/1") or a commit sha.

Branches: `POST /api/models/{ns}/{name}/branch/{branch}` (create_branch) starts a branch at
`startingPoint` or main's head (409 when it exists); commits, resolve and repo info take its name.
Pull requests: a commit with `?create_pr=1` goes onto a new ref `refs/pr/N` started from the head
of the branch it names, the answer carries `pullRequestUrl` (`.../discussions/N`, which the client
turns into `refs/pr/N`), and `GET /api/models/{ns}/{name}/discussions/N` (get_discussion_details)
describes it; PRs are never merged or closed here.

What it does NOT model: permissions and tokens (any token is accepted; none is checked), private
or gated repos, Xet storage (clients must set HF_HUB_DISABLE_XET=1), tags, merging, closing or
commenting on pull requests, discussions that are not pull requests, rate limits, pagination,
multipart LFS uploads, the Hub's own choice of upload mode (here: LFS for binary content, common
weight extensions and files of 10 MiB or more), and history rewrites. State lives in memory and is
lost when the server stops.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".npz", ".parquet", ".gguf", ".png", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a blob: sha1 over 'blob <size>\\0' + content (what the Hub sends as ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Blob:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def oid(self) -> str:
        return git_blob_sha1(self.content)


@dataclass
class Commit:
    sha: str
    parent: str | None
    summary: str
    files: dict[str, Blob]
    created: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # also refs/pr/N of pull requests
    commits: dict[str, Commit] = field(default_factory=dict)
    pull_requests: list[dict] = field(default_factory=list)  # {"num", "title", "base", "ref", "created"}

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return self.commits.get(revision)
        return None


class HubError(Exception):
    """An error response: status, X-Error-Code and message."""

    def __init__(self, status: int, code: str | None, message: str, *, body: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.body, self.headers = body or {}, headers or {}


class FakeHub:
    """The server's state: repos by (type, id), and LFS objects uploaded but not yet committed."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self._counter = 0

    # ---- state changes ----------------------------------------------------------------------------

    def new_sha(self, repo_id: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{repo_id}:{self._counter}:{time.time_ns()}".encode()).hexdigest()

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        if (repo_type, repo_id) in self.repos:
            # The Hub answers 409 with the repo's URL; create_repo(exist_ok=True) reads it.
            raise HubError(409, None, "You already created this repo", body={"url": f"/{URL_PREFIXES[repo_type]}{repo_id}"})
        repo = Repo(repo_type, repo_id, private)
        sha = self.new_sha(repo_id)
        repo.commits[sha] = Commit(sha, None, "initial commit", {".gitattributes": Blob(INITIAL_GITATTRIBUTES, False)})
        repo.branches["main"] = sha
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> None:
        if branch in repo.branches:
            raise HubError(409, None, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = self.revision(repo, starting_point or "main").sha

    def open_pull_request(self, repo: Repo, base: str, title: str) -> str:
        """A new ref refs/pr/N at the head of `base`, for the commit that follows; returns the ref."""
        if base not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {base}")
        num = len(repo.pull_requests) + 1
        ref = f"refs/pr/{num}"
        repo.branches[ref] = repo.branches[base]
        repo.pull_requests.append({"num": num, "title": title, "base": base, "ref": ref, "created": time.time()})
        return ref

    def commit(self, repo: Repo, branch: str, operations: list[dict]) -> Commit:
        if branch not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch} (only branches take commits here)")
        header = next((op["value"] for op in operations if op.get("key") == "header"), {})
        parent = repo.commits[repo.branches[branch]]
        if header.get("parentCommit") not in (None, parent.sha):
            raise HubError(412, None, f"parentCommit {header['parentCommit']} is not the head of {branch}")
        files = dict(parent.files)
        for op in operations:
            key, value = op.get("key"), op.get("value", {})
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                content = self.lfs_objects.get(value["oid"])
                if content is None:
                    raise HubError(422, None, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = Blob(content, True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound", f"{value['path']} does not exist")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: blob for path, blob in files.items() if not path.startswith(prefix)}
            elif key != "header":
                raise HubError(400, None, f"unsupported commit operation {key!r}")
        sha = self.new_sha(repo.repo_id)
        commit = Commit(sha, parent.sha, header.get("summary", ""), files)
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit

    # ---- lookups ----------------------------------------------------------------------------------

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found: {repo_type} {repo_id}")
        return repo

    def revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
        return commit

    def repo_info(self, repo: Repo, commit: Commit, *, files_metadata: bool) -> dict:
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if files_metadata:
                sibling.update(size=len(blob.content), blobId=blob.oid)
                if blob.lfs:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": len(blob.content), "pointerSize": 134}
            siblings.append(sibling)
        card = card_metadata(commit.files.get("README.md"))
        info = {
            "id": repo.repo_id,
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "siblings": siblings,
            "tags": card.get("tags", []) if isinstance(card.get("tags"), list) else [],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.created)),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.created)),
            "downloads": 0,
            "likes": 0,
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            if card.get("library_name"):
                info["library_name"] = card["library_name"]
            if card:
                info["cardData"] = card
        return info

    def tree(self, commit: Commit, path: str, recursive: bool) -> list[dict]:
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        under = {p: blob for p, blob in commit.files.items() if p.startswith(prefix)}
        if path and not under:
            raise HubError(404, "EntryNotFound", f"{path} does not exist in the tree")
        entries, folders = [], set()
        for file_path, blob in sorted(under.items()):
            rest = file_path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": git_blob_sha1(folder.encode()), "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries.append(file_entry(file_path, blob))
        return entries


def file_entry(path: str, blob: Blob) -> dict:
    entry = {"type": "file", "oid": blob.oid, "size": len(blob.content), "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": 134}
    return entry


def card_metadata(readme: Blob | None) -> dict:
    """The YAML front matter of a README, parsed with the few YAML forms model cards use."""
    if readme is None:
        return {}
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", readme.content.decode("utf-8", "replace"), re.S)
    if not match:
        return {}
    try:
        import yaml

        data = yaml.safe_load(match.group(1))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


class HubHandler(BaseHTTPRequestHandler):
    """Routes one request to FakeHub; every response has a Content-Length so keep-alive works."""

    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set on the subclass the server creates

    def log_message(self, format, *args):  # quiet: pytest shows failures, not access logs
        pass

    # ---- plumbing -----------------------------------------------------------------------------------

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def send(self, status: int, body: bytes = b"", *, headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, value, status: int = 200, headers: dict | None = None):
        self.send(status, json.dumps(value).encode(), headers=headers)

    def send_error_response(self, error: HubError):
        headers = dict(error.headers)
        if error.code:
            headers["X-Error-Code"] = error.code
        headers["X-Error-Message"] = error.message
        body = {"error": error.message, **error.body}
        if "url" in body and body["url"].startswith("/"):
            body["url"] = self.base_url + body["url"]
        self.send(error.status, json.dumps(body).encode(), headers=headers)

    def dispatch(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        self.hub.requests.append((self.command, path))
        try:
            body = self.read_body() if self.command in ("POST", "PUT") else b""
            with self.hub.lock:
                self.route(path, query, body)
        except HubError as error:
            self.send_error_response(error)
        except (KeyError, ValueError, json.JSONDecodeError) as error:
            self.send_error_response(HubError(400, None, f"bad request: {error!r}"))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = dispatch

    # ---- routes -------------------------------------------------------------------------------------

    def route(self, path: str, query: dict, body: bytes):
        method = self.command
        if method == "POST" and path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if method == "DELETE" and path == "/api/repos/delete":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            self.hub.repo(payload.get("type") or "model", repo_id)
            del self.hub.repos[(payload.get("type") or "model", repo_id)]
            return self.send_json({})
        if method == "POST" and path == "/api/validate-yaml":
            return self.send_json({"errors": [], "warnings": []})
        if method == "GET" and path == "/api/whoami-v2":
            return self.send_json({"type": "user", "name": "tester", "orgs": [], "auth": {"type": "access_token"}})
        if method == "GET" and path in ("/api/models", "/api/datasets", "/api/spaces"):
            return self.list_repos(REPO_TYPES[path.rsplit("/", 1)[1]], query)
        if method == "PUT" and path.startswith("/lfs-upload/"):
            return self.lfs_put(path.rsplit("/", 1)[1], body)

        match = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path)
        if match:
            repo = self.hub.repo(REPO_TYPES[match.group(1)], unquote(match.group(2)))
            return self.repo_api(repo, match.group(3) or "", query, body)

        match = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch", path)
        if match and method == "POST":
            return self.lfs_batch(json.loads(body))

        match = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match and method in ("GET", "HEAD"):
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(match.group(1) or "", "model")
            return self.resolve(repo_type, unquote(match.group(2)), match.group(3), unquote(match.group(4)))
        raise HubError(404, None, f"no route for {method} {path}")

    def create_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        name, organization = payload["name"], payload.get("organization")
        repo_id = f"{organization}/{name}" if organization else f"tester/{name}"
        self.hub.create_repo(repo_type, repo_id, bool(payload.get("private")))
        prefix = URL_PREFIXES[repo_type]
        self.send_json({"url": f"{self.base_url}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def list_repos(self, repo_type: str, query: dict):
        # The Hub's `filter` matches tags, and a card's library_name counts as one.
        wanted = set(query.get("filter") or [])
        search = (query.get("search") or [None])[0]
        results = []
        for (kind, repo_id), repo in sorted(self.hub.repos.items()):
            if kind != repo_type or (search and search not in repo_id):
                continue
            info = self.hub.repo_info(repo, repo.commits[repo.branches["main"]], files_metadata=False)
            if not wanted <= {*info["tags"], info.get("library_name")}:
                continue
            info.pop("siblings")
            results.append(info)
        limit = int((query.get("limit") or [len(results)])[0])
        self.send_json(results[:limit])

    def repo_api(self, repo: Repo, rest: str, query: dict, body: bytes):
        method = self.command
        if method == "GET" and (rest == "" or rest.startswith("revision/")):
            commit = self.hub.revision(repo, rest[len("revision/"):] if rest else "main")
            files_metadata = (query.get("blobs") or ["false"])[0] == "true" or "expand" in query
            return self.send_json(self.hub.repo_info(repo, commit, files_metadata=files_metadata))
        match = re.fullmatch(r"preupload/([^/]+)", rest)
        if match and method == "POST":
            self.hub.revision(repo, match.group(1))
            files = json.loads(body)["files"]
            return self.send_json({"files": [
                {"path": f["path"], "uploadMode": upload_mode(f), "shouldIgnore": False, "oid": None} for f in files
            ]})
        match = re.fullmatch(r"commit/([^/]+)", rest)
        if match and method == "POST":
            operations = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            branch, pull_request_url = unquote(match.group(1)), None
            prefix = URL_PREFIXES[repo.repo_type]
            if query.get("create_pr"):
                header = next((op["value"] for op in operations if op.get("key") == "header"), {})
                branch = self.hub.open_pull_request(repo, branch, header.get("summary", ""))
                pull_request_url = f"{self.base_url}/{prefix}{repo.repo_id}/discussions/{branch.rsplit('/', 1)[1]}"
            commit = self.hub.commit(repo, branch, operations)
            return self.send_json({
                "commitUrl": f"{self.base_url}/{prefix}{repo.repo_id}/commit/{commit.sha}",
                "commitOid": commit.sha,
                "pullRequestUrl": pull_request_url,
            })
        match = re.fullmatch(r"branch/(.+)", rest)
        if match and method == "POST":
            payload = json.loads(body) if body else {}
            self.hub.create_branch(repo, unquote(match.group(1)), payload.get("startingPoint"))
            return self.send_json({})
        match = re.fullmatch(r"discussions/(\d+)", rest)
        if match and method == "GET":
            pr = next((pr for pr in repo.pull_requests if pr["num"] == int(match.group(1))), None)
            if pr is None:
                raise HubError(404, None, f"Discussion {match.group(1)} not found")
            created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(pr["created"]))
            return self.send_json({
                "num": pr["num"], "title": pr["title"], "status": "open", "isPullRequest": True,
                "createdAt": created, "author": {"name": "tester"},
                "repo": {"name": repo.repo_id, "type": repo.repo_type},
                "changes": {"base": f"refs/heads/{pr['base']}"}, "filesWithConflicts": [], "events": [],
            })
        match = re.fullmatch(r"tree/([^/]+)(?:/(.*))?", rest)
        if match and method == "GET":
            commit = self.hub.revision(repo, match.group(1))
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("true", "1")
            return self.send_json(self.hub.tree(commit, unquote(match.group(2) or ""), recursive))
        match = re.fullmatch(r"paths-info/([^/]+)", rest)
        if match and method == "POST":
            commit = self.hub.revision(repo, match.group(1))
            paths = self.form_or_json_paths(body)
            entries = []
            for path in paths:
                path = path.strip("/")
                if path in commit.files:
                    entries.append(file_entry(path, commit.files[path]))
                elif any(p.startswith(path + "/") for p in commit.files):
                    entries.append({"type": "directory", "oid": git_blob_sha1(path.encode()), "size": 0, "path": path})
            return self.send_json(entries)
        match = re.fullmatch(r"refs", rest)
        if match and method == "GET":
            branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
                        for name, sha in repo.branches.items() if not name.startswith("refs/pr/")]
            return self.send_json({"branches": branches, "converts": [], "tags": []})
        raise HubError(404, None, f"no route for {method} /api/.../{rest}")

    def form_or_json_paths(self, body: bytes) -> list[str]:
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        return [paths] if isinstance(paths, str) else list(paths)

    def lfs_batch(self, payload: dict):
        if payload.get("operation") != "upload":
            raise HubError(400, None, "only LFS uploads are modelled")
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(answer)
        self.send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                  content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid: str, body: bytes):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, f"sha256 of the uploaded bytes does not match oid {oid}")
        self.hub.lfs_objects[oid] = body
        self.send(200)

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        repo = self.hub.repo(repo_type, repo_id)
        commit = self.hub.revision(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at revision {commit.sha}",
                           headers={"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.content)),
                            "ETag": f'"{blob.sha256}"'})
        content = blob.content
        status = 200
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if byte_range and self.command == "GET":
            start = int(byte_range.group(1))
            end = int(byte_range.group(2)) if byte_range.group(2) else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start:end + 1], 206
        headers["Content-Length"] = str(len(content))
        self.send(status, content, headers=headers, content_type="application/octet-stream")


def upload_mode(file: dict) -> str:
    sample = base64.b64decode(file.get("sample", ""))
    binary = b"\0" in sample
    if binary or file["path"].endswith(LFS_SUFFIXES) or file.get("size", 0) >= LFS_MIN_SIZE:
        return "lfs"
    return "regular"


class HubServer:
    """Start a FakeHub on 127.0.0.1 on a free port in a daemon thread; use as a context manager."""

    def __init__(self, hub: FakeHub | None = None):
        self.hub = hub or FakeHub()
        handler = type("BoundHubHandler", (HubHandler,), {"hub": self.hub})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def resolve_url(base: str, repo_id: str, path: str, revision: str = "main") -> str:
    """The download URL of one file, as huggingface_hub builds it."""
    return f"{base}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"
