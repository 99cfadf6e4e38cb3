"""Model downloads: the plan and its size up front, progress, resume, checksums, cancel; the HF hub source.

Nothing else in Storyloom touches the network: after setup the app runs offline.

    source = HubSource(token=token)               # endpoint: $HF_ENDPOINT or huggingface.co
    plan = source.plan(LLAMA3_8B_INSTRUCT)        # raises AccessDeniedError with the reason for gated models
    print(plan.describe())                        # files and total size, before starting
    with DownloadManager() as manager:
        manager.download(plan, dest, on_progress=..., cancel=threading.Event())
"""

from storyloom.downloads.errors import (
    AccessDeniedError,
    ChecksumError,
    DiskFullError,
    DownloadCancelledError,
    DownloadError,
)
from storyloom.downloads.hub import KNOWN_MODELS, LLAMA3_8B_INSTRUCT, SDXL_BASE, HubModel, HubSource
from storyloom.downloads.manager import DownloadManager
from storyloom.downloads.plan import DownloadPlan, RemoteFile
from storyloom.downloads.progress import DownloadProgress

__all__ = [
    "KNOWN_MODELS",
    "LLAMA3_8B_INSTRUCT",
    "SDXL_BASE",
    "AccessDeniedError",
    "ChecksumError",
    "DiskFullError",
    "DownloadCancelledError",
    "DownloadError",
    "DownloadManager",
    "DownloadPlan",
    "DownloadProgress",
    "HubModel",
    "HubSource",
    "RemoteFile",
]
