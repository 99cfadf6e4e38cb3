"""Chat prompts for each step. The concept prompt lives here; role prompts come from adapter manifests."""

from __future__ import annotations

from dataclasses import dataclass

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class RolePrompt:
    """How to ask for one step: a system prompt and a user template (fields ``{idea}``, ``{concept}``)."""

    system: str
    user_template: str

    def __post_init__(self) -> None:
        if not self.user_template.strip():
            raise ValueError("user_template: must not be empty")

    def messages(self, **fields: str) -> Messages:
        user = self.user_template.format(**fields)
        if not self.system:
            return [{"role": "user", "content": user}]
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


CONCEPT_PROMPT = RolePrompt(
    system=(
        "You plan short illustrated stories. Expand the user's idea into a concept: the main characters "
        "(a name and one line each), the setting, the tone, and three to five plot beats. Plain text, "
        "under 150 words."
    ),
    user_template="Idea: {idea}",
)
