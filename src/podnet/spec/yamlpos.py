"""YAML to plain Python, remembering the line of every value.

PyYAML's composer keeps a source position on every node; we walk the node tree once and
record ``path -> line`` so that an error found later (by pydantic or by a cross-document
check) can name the line the user has to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]
# libyaml's composer when PyYAML has it (8x faster on a 200-pod file), with the same marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = yaml.constructor.SafeConstructor()


@dataclass
class Document:
    data: Any
    line: int  # first line of the document
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.line


def _construct(node: yaml.Node, path: Path, lines: dict[Path, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.MarkedYAMLError(problem="only plain keys are supported", problem_mark=key_node.start_mark)
            key = str(key_node.value)
            if key in out:
                raise _Duplicate(key, key_node.start_mark.line + 1, path)
            out[key] = _construct(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*path, i), lines) for i, v in enumerate(node.value)]
    # A scalar: the composer already resolved its tag (int, bool, null, str).
    return _SCALARS.construct_object(node, deep=True)


class _Duplicate(Exception):
    def __init__(self, key: str, line: int, path: Path) -> None:
        super().__init__(key)
        self.key, self.line, self.path = key, line, path


def compose_documents(text: str) -> list[Document]:
    """Every document of a YAML stream, with positions. Raises yaml.YAMLError or _Duplicate."""
    docs = []
    for node in yaml.compose_all(text, Loader=_LOADER):
        if node is None:
            continue
        lines: dict[Path, int] = {}
        data = _construct(node, (), lines)
        docs.append(Document(data, node.start_mark.line + 1, lines))
    return docs


DuplicateKey = _Duplicate


def field_path(path: Path) -> str:
    """``("spec", "nodes", 1, "name")`` -> ``spec.nodes[1].name``: the field as the user reads it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def spec_error(file: str, doc: Document, path: Path, message: str):
    """The error for ``path`` in ``doc``: file, the line of that field, the field, the message."""
    from podnet.errors import SpecError

    return SpecError(file, doc.line_of(path), field_path(path), message)
