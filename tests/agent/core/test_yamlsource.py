"""The YAML reader: libyaml's parser where PyYAML has it, with the same result, lines and
error words as PyYAML's own parser in Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from massgate.agent.core import yamlsource
from massgate.agent.core.yamlsource import ConfigError, YamlMap, YamlSeq

ROOT = Path(__file__).resolve().parents[3]
FILES = sorted(
    [ROOT / "config.example.yaml", *(ROOT / "tests/agent/config/cases").glob("*/*.yaml")]
)


def _shape(value: Any) -> Any:
    """The value with every line it remembers."""
    if isinstance(value, YamlMap):
        return ("map", value.line, {k: (value.key_lines[k], _shape(v)) for k, v in value.items()})
    if isinstance(value, YamlSeq):
        return ("seq", value.line, value.item_lines, [_shape(v) for v in value])
    return value


def test_libyaml_is_used_where_pyyaml_has_it() -> None:
    assert yaml.__with_libyaml__, "the wheels for x86-64 and aarch64 carry libyaml"
    assert yamlsource._FastLoader is not None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.parent.name)
def test_both_parsers_read_every_file_alike(path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        pytest.skip("not text: refused before parsing")
    try:
        pure = _shape(yaml.load(text, Loader=yamlsource._Loader))
    except yaml.YAMLError as exc:
        words = str(getattr(exc, "problem", "") or exc)
    else:
        assert _shape(yaml.load(text, Loader=yamlsource._FastLoader)) == pure
        return
    with pytest.raises(yaml.YAMLError):
        yaml.load(text, Loader=yamlsource._FastLoader)
    with pytest.raises(ConfigError) as raised:
        yamlsource.load_text(text, filename="f.yaml")
    assert words in str(raised.value), "the Python parser's words"


def test_a_deep_file_is_refused_by_the_fast_parser_too() -> None:
    deep = "[" * (yamlsource.MAX_DEPTH + 5) + "]" * (yamlsource.MAX_DEPTH + 5)
    with pytest.raises(yaml.composer.ComposerError, match="nested deeper"):
        yaml.load(deep, Loader=yamlsource._FastLoader)
