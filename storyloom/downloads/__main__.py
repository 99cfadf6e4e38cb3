"""`python -m storyloom.downloads MODEL --dest DIR`: fetch a real model from the Hugging Face hub.

Shows the plan and its size first, then progress; Ctrl+C cancels and keeps partial files for resume.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from storyloom.downloads.errors import GB, DownloadError
from storyloom.downloads.hub import KNOWN_MODELS, HubSource
from storyloom.downloads.manager import DownloadManager
from storyloom.downloads.progress import DownloadProgress


def print_progress(p: DownloadProgress) -> None:
    eta = "" if p.eta_s is None else f", {p.eta_s / 60:.0f} min left"
    print(
        f"\r{p.fraction:6.1%}  {p.bytes_done / GB:.2f}/{p.bytes_total / GB:.2f} GB  "
        f"{p.speed_bps / 1e6:.1f} MB/s{eta}  {p.file:<48.48}",
        end="",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storyloom.downloads", description=__doc__)
    parser.add_argument("model", choices=sorted(KNOWN_MODELS), help="which model")
    parser.add_argument("--dest", type=Path, required=True, help="folder for the model files")
    parser.add_argument("--token", default=None, help="Hugging Face access token (default: $HF_TOKEN)")
    parser.add_argument("--endpoint", default=None, help="hub address (default: $HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--plan-only", action="store_true", help="show the files and sizes, download nothing")
    args = parser.parse_args(argv)
    try:
        with HubSource(endpoint=args.endpoint, token=args.token) as source:
            plan = source.plan(KNOWN_MODELS[args.model])
        print(plan.describe())
        if args.plan_only:
            return 0
        with DownloadManager() as manager:
            paths = manager.download(plan, args.dest, on_progress=print_progress)
    except KeyboardInterrupt:
        print("\ncancelled; partial files are kept and the next run resumes them", file=sys.stderr)
        return 130
    except DownloadError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    print(f"\ndone: {len(paths)} files in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
