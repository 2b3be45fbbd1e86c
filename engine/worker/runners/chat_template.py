# A model's chat template (Hugging Face convention), compiled once at load: see the
# text runner's module rules (textgen.py) for where it is read from and how it is
# rendered. Split from textgen.py, which re-exports ChatTemplate.
from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import jinja2
import jinja2.sandbox

from engine.worker.runners.base import InvalidTaskInput, ModelLoadError

__all__ = ["ChatTemplate"]


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def _token_text(value: Any) -> str:
    """tokenizer_config token entries are strings or {"content": ...} objects."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else ""


@attrs.frozen
class ChatTemplate:
    """A model's chat template, compiled (see the module rules)."""

    template: jinja2.Template
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def load(cls, model_dir: Path, tokenizer_config: Mapping[str, Any]) -> ChatTemplate | None:
        """The template of `model_dir`, or None when it has none."""
        source: Any = None
        jinja_file = model_dir / "chat_template.jinja"
        if jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        else:
            source = tokenizer_config.get("chat_template")
            if isinstance(source, list):  # [{"name": ..., "template": ...}]
                named = {entry.get("name"): entry.get("template") for entry in source if isinstance(entry, Mapping)}
                source = named.get("default")
        if source is None:
            return None
        if not isinstance(source, str):
            raise ModelLoadError(f"{model_dir}: chat_template must be a string, got {type(source).__name__}")
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now  # Llama 3.x templates date their system turn
        try:
            template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ModelLoadError(f"{model_dir}: the chat template does not compile: {exc}") from exc
        return cls(template, _token_text(tokenizer_config.get("bos_token")),
                   _token_text(tokenizer_config.get("eos_token")))

    def render(self, prompt: str) -> str:
        """The prompt as one user turn, followed by the assistant's generation prompt."""
        try:
            return self.template.render(
                messages=[{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as exc:
            raise InvalidTaskInput(f"the model's chat template rejected the prompt: {exc}") from exc
