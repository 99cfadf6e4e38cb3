"""Built-in adapter manifests (`adapters/<name>/manifest.toml`) and the adapter store (stdlib only)."""

from __future__ import annotations

from adapters.manifest import AdapterManifest, ManifestError, builtin_manifests
from adapters.store import AdapterStore, StoredAdapter, peft_folder_problems

__all__ = [
    "AdapterManifest",
    "AdapterStore",
    "ManifestError",
    "StoredAdapter",
    "builtin_manifests",
    "peft_folder_problems",
]
