"""The README's configuration file: it loads, it is the defaults it says it is, each commented
alternative loads on its own, and together they name every setting of ``keybroker.config.Settings``
(every section, every field of every key-store, seal and Vault auth variant), so a new setting
cannot be added without the README showing it."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, RootModel

from keybroker.config import Settings, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _block() -> str:
    text = README.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    found = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(found) == 1, "the README's Configuration section should hold one TOML block"
    return str(found[0])


BLOCK = _block()


def _alternatives() -> list[str]:
    """The commented-out examples: a ``# [section]`` line and the ``# `` lines after it, uncommented."""
    out: list[str] = []
    current: list[str] | None = None
    for line in BLOCK.splitlines():
        if re.match(r"# \[\[?[a-z_.]+\]\]?$", line):
            current = [line[2:]]
            out.append("")
        elif current is not None and line.startswith("# "):
            current.append(line[2:])
        else:
            current = None
        if current is not None:
            out[-1] = "\n".join(current) + "\n"
    return out


ALTERNATIVES = _alternatives()


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "keybroker.toml"
    path.write_text(text)
    return load_settings(path, {})


def test_the_block_loads_and_is_the_defaults(tmp_path: Path) -> None:
    assert _load(tmp_path, BLOCK) == Settings()


@pytest.mark.parametrize("text", ALTERNATIVES, ids=[a.split("\n")[1] for a in ALTERNATIVES])
def test_each_commented_alternative_loads(tmp_path: Path, text: str) -> None:
    settings = _load(tmp_path, text)
    header = text.split("\n", 1)[0].strip("[]")
    if header in ("keystore", "seal"):
        declared = re.search(r'^type = "(\w+)"', text, re.M)
        assert declared is not None
        assert getattr(settings, header).root.type == declared.group(1)
    elif header == "oidc":
        assert settings.oidc is not None and settings.oidc.role_mapping["kb-audit"] == ["auditor"]
    else:
        assert header == "trust.attestation_services" and len(settings.trust.attestation_services) == 1


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside a field's annotation (unions, lists, Optional, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            yield from _models(arg)


def _sections() -> Iterator[tuple[str, type[BaseModel], str | None]]:
    """(TOML table, model, its ``type``/``method`` tag or None) for every model under Settings."""
    pending: list[tuple[str, type[BaseModel]]] = [("", Settings)]
    while pending:
        table, model = pending.pop()
        if issubclass(model, RootModel):
            for variant in _models(model.model_fields["root"].annotation):
                tag = typing.get_args(variant.model_fields["type"].annotation)[0]
                yield table, variant, tag
                pending += _nested(table, variant)
            continue
        yield table, model, None
        pending += _nested(table, model)


def _nested(table: str, model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    out = []
    for name, info in model.model_fields.items():
        for sub in _models(info.annotation):
            if table and sub.__name__.startswith("Vault") and "Auth" in sub.__name__:
                continue  # the inline auth table: checked with its connection
            out.append((f"{table}.{name}".lstrip("."), sub))
    return out


def _text_of(table: str, tag: str | None) -> str:
    """The block's text for a table: the active one, or the commented alternative of that type."""
    if tag is not None and tag not in ("builtin", "shamir"):
        texts = [a for a in ALTERNATIVES if a.startswith(f"[{table}]\n") and f'type = "{tag}"' in a]
        assert len(texts) == 1, f"the README shows no [{table}] example of type {tag!r}"
        return texts[0]
    if table == "trust.attestation_services":
        texts = [a for a in ALTERNATIVES if a.startswith(f"[[{table}]]")]
        assert len(texts) == 1, f"the README shows no [[{table}]] example"
        return texts[0]
    if table == "oidc":  # optional (None: no provider): shown commented out
        texts = [a for a in ALTERNATIVES if a.startswith(f"[{table}]\n")]
        assert len(texts) == 1, f"the README shows no [{table}] example"
        return texts[0]
    assert not table or f"\n[{table}]" in BLOCK, f"the README shows no [{table}] section"
    start = 0 if not table else BLOCK.index(f"\n[{table}]")
    end = BLOCK.find("\n[", start + 1)
    return BLOCK[start : end if end != -1 else None]


def test_every_setting_is_in_the_block() -> None:
    missing = []
    for table, model, tag in _sections():
        text = _text_of(table, tag)
        for name, info in model.model_fields.items():
            if any(True for _ in _models(info.annotation)) and name != "auth":
                continue  # a table of its own, checked as a section
            if not re.search(rf"(?m)(^|[\s{{,])#?\s*{name}\s*=", text):
                missing.append(f"{table or '(top level)'}{f' type {tag}' if tag else ''}: {name}")
        if model.__name__.startswith("Vault") and model.__name__ != "VaultConnection":
            for auth in ("VaultTokenAuth", "VaultAppRoleAuth"):
                auth_model = next(
                    m for m in _models(model.model_fields["auth"].annotation) if m.__name__ == auth
                )
                for name in auth_model.model_fields:
                    if not re.search(rf"\b{name}\s*=", text):
                        missing.append(f"{table} type {tag} auth {auth}: {name}")
    assert not missing, "settings the README's configuration file does not show: " + ", ".join(missing)
