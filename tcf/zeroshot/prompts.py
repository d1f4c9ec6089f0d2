"""Prompt templates as files (Jinja2), rendered into chat messages.

Templates live in the repository's ``prompts/`` folder.  A source checkout or an
editable install reads that folder directly; a wheel installs it as data files under
``<prefix>/share/tcf/prompts`` (see ``pyproject.toml``); ``TCF_PROMPTS_DIR`` overrides
both.  A config may also name a template file by path.
"""

from __future__ import annotations

import os
import string
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tcf.errors import ConfigError

SUFFIX = ".jinja"
LETTERS = string.ascii_uppercase

# how the templates talk about a dataset's items: (noun, plural, verb (I've ...), verb_base, verb_past)
WORDS = {
    "ml-100k": ("movie", "movies", "watched", "watch", "watched"),
    "mind": ("news article", "news articles", "read", "read", "read"),
    "hm": ("product", "products", "bought", "buy", "bought"),
}
DEFAULT_WORDS = ("item", "items", "interacted with", "interact with", "interacted with")


def prompt_dirs() -> list[Path]:
    """Where templates are looked for, in order."""
    dirs = []
    if os.environ.get("TCF_PROMPTS_DIR"):
        dirs.append(Path(os.environ["TCF_PROMPTS_DIR"]))
    dirs.append(Path(__file__).resolve().parents[2] / "prompts")  # source checkout / editable install
    for base in {sysconfig.get_path("data"), sys.prefix}:  # wheel: [tool.setuptools.data-files]
        dirs.append(Path(base) / "share" / "tcf" / "prompts")
    return dirs


def template_path(name: str) -> Path:
    """A template name (``rank``) or a file path -> the file."""
    path = Path(name).expanduser()
    if path.suffix == SUFFIX or path.is_file():
        if not path.is_file():
            raise ConfigError(f"zeroshot.prompt: template file {path} not found")
        return path
    for d in prompt_dirs():
        if (d / f"{name}{SUFFIX}").is_file():
            return d / f"{name}{SUFFIX}"
    raise ConfigError(f"zeroshot.prompt: no template {name!r}; looked in {[str(d) for d in prompt_dirs()]}")


@lru_cache(maxsize=32)
def _load(path: str, mtime_ns: int):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    try:
        return env.from_string(Path(path).read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None


def example_answer(n: int) -> list[int]:
    """The candidate numbers (from 1) of the example answer a ranking prompt of ``n`` candidates shows
    ("3, 1, 2, 4, 5, ...")."""
    return [3, 1, 2, 4, 5][: min(n, 5)] if n >= 3 else list(range(1, n + 1))


@dataclass(frozen=True)
class PromptTemplate:
    path: Path

    @classmethod
    def named(cls, name: str) -> PromptTemplate:
        return cls(template_path(name))

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def render(self, *, history: list[str], candidates: list[str], k: int = 10, source: str | None = None) -> str:
        """The user message for one prompt.  Candidates are numbered from 1 and lettered from A."""
        import jinja2

        noun, nouns, verb, verb_base, verb_past = WORDS.get(source or "", DEFAULT_WORDS)
        n = len(candidates)
        example = example_answer(n)
        values = {
            "history": list(history), "n": n, "k": k, "noun": noun, "nouns": nouns, "verb": verb, "verb_base": verb_base,
            "verb_past": verb_past, "letters": ", ".join(LETTERS[:n]),
            "candidates": [{"index": i + 1, "label": LETTERS[i] if i < len(LETTERS) else str(i + 1), "text": t}
                        for i, t in enumerate(candidates)],
            "example": ", ".join(map(str, example)) + (", ..." if n > len(example) else ""),
            "example_json": "[" + ", ".join(map(str, sorted(example, reverse=True)[:3])) + ", ...]",
        }
        try:
            out = _load(str(self.path), self.path.stat().st_mtime_ns).render(**values)
        except jinja2.UndefinedError as e:
            raise ConfigError(f"{self.path}: {e.message}; known variables: {sorted(values)}") from None
        return out.strip() + "\n"


def messages(user: str, system: str | None = None) -> list[dict]:
    """One chat prompt: an optional system message and the rendered user message."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
