"""Hugging Face hub source: file lists with sizes and sha256 from the hub API, for the models we support."""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from storyloom.downloads.errors import AccessDeniedError, DownloadError
from storyloom.downloads.plan import DownloadPlan, RemoteFile, is_safe_model_file

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_TREE_PAGES = 100


@dataclass(frozen=True)
class HubModel:
    """A hub repository and which of its files Storyloom needs (fnmatch patterns on repo paths)."""

    key: str
    repo_id: str
    title: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    revision: str = "main"
    gated_by: str = ""  # who must grant access (e.g. "Meta's Llama 3 license"); "" when not gated

    def __post_init__(self) -> None:
        if self.repo_id.count("/") != 1 or not all(self.repo_id.split("/")):
            raise ValueError(f"HubModel '{self.key}': repo_id must look like 'owner/name', got '{self.repo_id}'")
        if not self.include:
            raise ValueError(f"HubModel '{self.key}': include must name at least one pattern")

    @property
    def is_gated(self) -> bool:
        return bool(self.gated_by)

    def wants(self, path: str) -> bool:
        """Whether `path` is one of the files Storyloom fetches (never pickle weights)."""
        if not is_safe_model_file(path):
            return False
        if any(fnmatch.fnmatchcase(path, p) for p in self.exclude):
            return False
        return any(fnmatch.fnmatchcase(path, p) for p in self.include)


LLAMA3_8B_INSTRUCT = HubModel(
    key="llama-3-8b-instruct",
    repo_id="meta-llama/Meta-Llama-3-8B-Instruct",
    title="Llama 3 8B Instruct",
    include=("*.safetensors", "*.json"),
    exclude=("original/*",),  # Meta's own format duplicates the weights as a pickle
    gated_by="Meta's Llama 3 Community License",
)
SDXL_BASE = HubModel(
    key="sdxl-base",
    repo_id="stabilityai/stable-diffusion-xl-base-1.0",
    title="Stable Diffusion XL base 1.0",
    include=("sd_xl_base_1.0.safetensors",),  # one file; its configs ship in assets/sdxl
)
KNOWN_MODELS: dict[str, HubModel] = {m.key: m for m in (LLAMA3_8B_INSTRUCT, SDXL_BASE)}


class HubSource:
    """Lists and plans downloads from a Hugging Face hub (or any server speaking its API).

    `endpoint` defaults to $HF_ENDPOINT, then huggingface.co; `token` to $HF_TOKEN.
    """

    def __init__(self, endpoint: str | None = None, token: str | None = None, client: httpx.Client | None = None):
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token or os.environ.get("HF_TOKEN") or None
        self._client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, connect=15.0))
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HubSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def model_url(self, model: HubModel) -> str:
        return f"{self.endpoint}/{model.repo_id}"

    def access_hint(self, model: HubModel) -> str:
        """Why access may be refused and what to do, in the user's words."""
        if not model.is_gated:
            return f"Check that {self.model_url(model)} exists and is public, or give a Hugging Face token."
        return (
            f"{model.title} is gated: {model.gated_by} must be accepted on {self.model_url(model)} "
            "while logged in to your Hugging Face account (approval can take a while), then give Storyloom "
            f"an access token with 'read' permission from {self.endpoint}/settings/tokens."
        )

    def resolve_url(self, model: HubModel, path: str) -> str:
        return f"{self.endpoint}/{model.repo_id}/resolve/{quote(model.revision, safe='')}/{quote(path)}"

    def list_files(self, model: HubModel) -> list[RemoteFile]:
        """The files Storyloom needs from `model`, with sizes and checksums from the hub's tree API."""
        url = f"{self.endpoint}/api/models/{model.repo_id}/tree/{quote(model.revision, safe='')}"
        params: dict[str, str] | None = {"recursive": "true"}
        entries: list[dict] = []
        for _ in range(MAX_TREE_PAGES):
            response = self._get(model, url, params)
            page = response.json()
            if not isinstance(page, list):
                raise DownloadError(f"{model.repo_id}: unexpected file list from {self.endpoint}: {page!r:.200}")
            entries += page
            url = response.links.get("next", {}).get("url")
            params = None  # the next-page link carries its own query
            if url is None:
                break
        else:
            raise DownloadError(f"{model.repo_id}: the file list has more than {MAX_TREE_PAGES} pages")
        files = [self._remote_file(model, e) for e in entries if e.get("type") == "file" and model.wants(e["path"])]
        if not files:
            raise DownloadError(f"{model.repo_id}@{model.revision}: none of the expected files {model.include} found")
        skipped = sorted(e["path"] for e in entries if e.get("type") == "file" and not model.wants(e["path"]))
        logger.info("%s: fetching %d files, skipping %d (%s)", model.repo_id, len(files), len(skipped), skipped)
        return files

    def plan(self, model: HubModel) -> DownloadPlan:
        """The download plan for `model`; for a gated model, checks access first so the user learns early."""
        if model.is_gated and not self.token:
            raise AccessDeniedError(model.repo_id, 401, "No Hugging Face token was given. " + self.access_hint(model))
        files = tuple(self.list_files(model))
        plan = DownloadPlan(model.title, files, headers=self.headers, access_hint=self.access_hint(model))
        if model.is_gated:
            self._check_access(model, min(files, key=lambda f: f.size or 0))
        return plan

    def _check_access(self, model: HubModel, remote: RemoteFile) -> None:
        try:
            response = self._client.head(remote.url, headers=self.headers)
        except httpx.HTTPError as exc:
            raise DownloadError(f"cannot reach {self.endpoint}: {exc}") from exc
        if response.status_code in (401, 403):
            raise AccessDeniedError(model.repo_id, response.status_code, self.access_hint(model))

    def _get(self, model: HubModel, url: str, params: dict[str, str] | None) -> httpx.Response:
        try:
            response = self._client.get(url, params=params, headers=self.headers)
        except httpx.HTTPError as exc:
            raise DownloadError(
                f"cannot reach {self.endpoint} ({exc}). Check the internet connection, or choose model files "
                "already on disk instead."
            ) from exc
        if response.status_code in (401, 403):
            raise AccessDeniedError(model.repo_id, response.status_code, self.access_hint(model))
        if response.status_code == 404:
            raise DownloadError(f"{model.repo_id}@{model.revision}: not found on {self.endpoint} (HTTP 404)")
        if response.status_code >= 400:
            raise DownloadError(f"{model.repo_id}: HTTP {response.status_code} from {url}")
        return response

    def _remote_file(self, model: HubModel, entry: dict) -> RemoteFile:
        try:
            lfs = entry.get("lfs") or {}
            return RemoteFile(
                path=entry["path"],
                url=self.resolve_url(model, entry["path"]),
                size=int(lfs.get("size", entry["size"])),
                sha256=lfs.get("oid"),
                git_sha1=None if lfs else entry.get("oid"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DownloadError(f"{model.repo_id}: unreadable file entry {entry!r:.200} ({exc})") from exc
