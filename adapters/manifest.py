"""Adapter manifests: what a built-in adapter is for and how to prompt it (`adapters/<name>/manifest.toml`)."""

from __future__ import annotations

import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

BUILTIN_DIR = Path(__file__).resolve().parent
MANIFEST_FILE_NAME = "manifest.toml"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
PLACEHOLDERS = frozenset({"concept", "idea"})
# SamplingParams fields a manifest may preset (engine.config.SamplingParams), with their value types.
SAMPLING_KEYS: dict[str, tuple[type, ...]] = {
    "max_tokens": (int,),
    "temperature": (int, float),
    "top_k": (int,),
    "top_p": (int, float),
    "repetition_penalty": (int, float),
}


class ManifestError(ValueError):
    """A manifest file is missing, malformed or holds invalid values; names the file and every reason."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"adapter manifest {path} is invalid:\n{lines}")


def is_valid_name(name: object) -> bool:
    """Adapter names: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None and ".." not in name


def is_valid_role(role: object) -> bool:
    return isinstance(role, str) and ROLE_PATTERN.fullmatch(role) is not None


def _template_problems(template: object) -> list[str]:
    if not isinstance(template, str) or not template.strip():
        return ["prompt_template: must be non-empty text"]
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return [f"prompt_template: {exc} (write literal braces as {{{{ and }}}})"]
    problems = [f"prompt_template: unknown placeholder {{{f}}}" for f in sorted(fields - PLACEHOLDERS)]
    if not fields & PLACEHOLDERS:
        problems.append("prompt_template: must contain {concept} or {idea}")
    return problems


def _sampling_problems(sampling: object) -> list[str]:
    if not isinstance(sampling, dict):
        return ["sampling: must be a table"]
    problems = []
    for key, value in sampling.items():
        kinds = SAMPLING_KEYS.get(key)
        if kinds is None:
            problems.append(f"sampling.{key}: unknown setting; use {', '.join(SAMPLING_KEYS)}")
        elif isinstance(value, bool) or not isinstance(value, kinds):
            problems.append(f"sampling.{key}: must be a number, got {value!r}")
    return problems


@dataclass(frozen=True)
class AdapterManifest:
    """A built-in adapter's role, prompts and default sampling."""

    name: str
    role: str  # "story": title line + story; "image_prompt": SDXL tags line + "Negative:" line
    description: str
    system_prompt: str
    prompt_template: str  # uses {concept} and/or {idea}
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields
    base_model_family: str = "llama-3"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ManifestError(self.name, problems)

    def problems(self) -> list[str]:
        problems = []
        if not is_valid_name(self.name):
            problems.append(f"name: {self.name!r} is not a valid adapter name (use a-z, 0-9, '.', '_', '-')")
        if not is_valid_role(self.role):
            problems.append(f"role: {self.role!r} is not a valid role (use a-z, 0-9, '_')")
        for name in ("description", "system_prompt", "base_model_family"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{name}: must be non-empty text")
        return problems + _template_problems(self.prompt_template) + _sampling_problems(self.sampling)

    def format_prompt(self, *, concept: str = "", idea: str = "") -> str:
        """The user message: the template with the concept and the idea filled in."""
        return self.prompt_template.format(concept=concept.strip(), idea=idea.strip())

    def messages(self, *, concept: str = "", idea: str = "") -> list[dict[str, str]]:
        """Chat messages (system prompt + filled template) for the engine's chat-template prompts."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.format_prompt(concept=concept, idea=idea)},
        ]

    @classmethod
    def load(cls, path: Path) -> AdapterManifest:
        """Read and validate a manifest.toml; raises ManifestError naming the file and every problem."""
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ManifestError(path, [f"cannot be read: {exc}"]) from exc
        known = {"name", "role", "description", "system_prompt", "prompt_template", "sampling"}
        known.add("base_model_family")
        problems = [f"{key}: unknown field" for key in sorted(set(doc) - known)]
        problems += [f"{key}: missing" for key in sorted(known - set(doc) - {"sampling", "base_model_family"})]
        if problems:
            raise ManifestError(path, problems)
        try:
            return cls(**doc)
        except ManifestError as exc:
            raise ManifestError(path, exc.problems) from exc


def builtin_manifests() -> dict[str, AdapterManifest]:
    """The manifests shipped in this package, by adapter name; a folder's name must match its manifest."""
    manifests = {}
    for file in sorted(BUILTIN_DIR.glob(f"*/{MANIFEST_FILE_NAME}")):
        manifest = AdapterManifest.load(file)
        if manifest.name != file.parent.name:
            raise ManifestError(file, [f"name: {manifest.name!r} differs from its folder {file.parent.name!r}"])
        manifests[manifest.name] = manifest
    return manifests
