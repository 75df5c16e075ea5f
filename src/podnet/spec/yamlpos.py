"""YAML to plain Python, remembering the line of every value, within bounds.

PyYAML's composer keeps a source position on every node; we walk the node tree once and
record ``path -> line`` so that an error found later (by pydantic or by a cross-document
check) can name the line the user has to fix.

The walk is bounded, so no input makes it run out of stack or memory:

- nesting deeper than :data:`MAX_DEPTH` is refused (no manifest comes near it; a recursive
  alias, ``&a [*a]``, is caught the same way);
- aliases may not expand the document much past what was written: the budget of Kubernetes'
  own YAML decoder (go-yaml, behind sigs.k8s.io/yaml), which refuses a document once more than
  100 of its decoded nodes came from aliases and those are more than 99% of the nodes decoded
  (after the first 1,000; the share allowed falls to 10% between 400,000 and 4,000,000
  nodes). A "billion laughs" of 1.5 KB is refused after a few thousand nodes instead of
  expanding into gigabytes.

A syntax error names the line where the construct the parser was reading began (an unclosed
``[``, a quote), and says where the parser gave up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from podnet.errors import SpecError

Path = tuple[str | int, ...]
# libyaml's composer when PyYAML has it (8x faster on a 200-pod file), with the same marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_DEPTH = 100
ALIAS_FREE_NODES = 100  # go-yaml: below this many alias-made nodes ...
ALIAS_FREE_DECODES = 1000  # ... or this many nodes in all, aliases are never refused
ALIAS_RATIO_LOW, ALIAS_RATIO_HIGH = 400_000, 4_000_000


@dataclass
class Document:
    """One object of the stream (a document, or a part of one such as a List item), with lines.

    ``prefix`` is where the object sits in its document: paths given to :meth:`line_of` and
    :func:`spec_error` are relative to it, and errors name the whole path.
    """

    file: str
    data: Any
    line: int  # first line of the object
    lines: dict[Path, int] = field(default_factory=dict)
    prefix: Path = ()

    def line_of(self, path: Path) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        p = (*self.prefix, *path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.line

    def at(self, path: Path, data: Any) -> Document:
        """The part of this document at ``path`` (whose value is ``data``), for errors within it."""
        return Document(self.file, data, self.line_of(path), self.lines, (*self.prefix, *path))


def allowed_alias_ratio(decodes: int) -> float:
    """The share of decoded nodes that may come from aliases (go-yaml's ``allowedAliasRatio``)."""
    if decodes <= ALIAS_RATIO_LOW:
        return 0.99
    if decodes >= ALIAS_RATIO_HIGH:
        return 0.10
    return 0.99 - 0.89 * (decodes - ALIAS_RATIO_LOW) / (ALIAS_RATIO_HIGH - ALIAS_RATIO_LOW)


class _Builder:
    """Plain Python values from one document's node tree, counting what aliases add."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.scalars = yaml.constructor.SafeConstructor()  # it memoises nodes: one per document
        self.lines: dict[Path, int] = {}
        self.met: set[int] = set()  # nodes already built once: meeting one again is an alias
        self.decodes = 0
        self.aliased = 0

    def build(self, node: yaml.Node, path: Path = (), depth: int = 0, in_alias: bool = False) -> Any:
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise SpecError(self.file, line, "", f"YAML nested more than {MAX_DEPTH} levels deep")
        in_alias = in_alias or id(node) in self.met
        self.met.add(id(node))
        self._count(in_alias, line)
        self.lines[path] = line
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    raise SpecError(
                        self.file, key_node.start_mark.line + 1, "", "YAML syntax error: only plain keys are supported"
                    )
                key = str(key_node.value)
                if key in out:
                    raise SpecError(self.file, key_node.start_mark.line + 1, field_path((*path, key)), "duplicate key")
                out[key] = self.build(value_node, (*path, key), depth + 1, in_alias)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, i), depth + 1, in_alias) for i, v in enumerate(node.value)]
        # A scalar: the composer already resolved its tag (int, bool, null, str).
        return self.scalars.construct_object(node, deep=True)

    def _count(self, in_alias: bool, line: int) -> None:
        self.decodes += 1
        self.aliased += in_alias
        if (
            self.aliased > ALIAS_FREE_NODES
            and self.decodes > ALIAS_FREE_DECODES
            and self.aliased / self.decodes > allowed_alias_ratio(self.decodes)
        ):
            raise SpecError(
                self.file,
                line,
                "",
                f"YAML aliases expand this document past {self.decodes} values, {self.aliased} of them copies "
                "(refused, as Kubernetes' YAML decoder refuses excessive aliasing)",
            )


def parse(text: str, file: str) -> list[Document]:
    """Every document of a YAML stream, with positions; one SpecError for any problem."""
    docs = []
    try:
        for node in yaml.compose_all(text, Loader=_LOADER):
            if node is None:
                continue
            builder = _Builder(file)
            data = builder.build(node)
            docs.append(Document(file, data, node.start_mark.line + 1, builder.lines))
    except yaml.MarkedYAMLError as exc:
        raise syntax_error(file, exc) from None
    except yaml.YAMLError as exc:
        raise SpecError(file, None, "", f"YAML syntax error: {_one_line(str(exc))}") from None
    except RecursionError:  # the pure-Python composer recurses once per level
        raise SpecError(file, None, "", "YAML nested too deeply") from None
    return docs


def syntax_error(file: str, exc: yaml.MarkedYAMLError) -> SpecError:
    """The error at the line where the mistake begins: an unclosed construct's first line."""
    context, problem = _one_line(exc.context or ""), _one_line(exc.problem or "")
    began, failed = exc.context_mark, exc.problem_mark
    if began is not None and failed is not None and context and began.line < failed.line:
        if context.startswith("while "):  # "while parsing a flow sequence"
            construct = context.split(" ", 2)[2].removeprefix("a ").removeprefix("an ")
            return SpecError(
                file,
                began.line + 1,
                "",
                f"YAML syntax error in the {construct} that begins here (column {began.column + 1}): "
                f"{problem} at line {failed.line + 1}, column {failed.column + 1}",
            )
        return SpecError(  # "found duplicate anchor; first occurrence" ... "second occurrence"
            file, failed.line + 1, "", f"YAML syntax error: {context} at line {began.line + 1}; {problem} here"
        )
    mark = failed or began
    return SpecError(
        file,
        mark.line + 1 if mark else None,
        "",
        f"YAML syntax error: {problem or context}" + (f" (column {mark.column + 1})" if mark else ""),
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def field_path(path: Path) -> str:
    """``("spec", "nodes", 1, "name")`` -> ``spec.nodes[1].name``: the field as the user reads it."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def spec_error(doc: Document, path: Path, message: str) -> SpecError:
    """The error for ``path`` in ``doc``: its file, the line of that field, the field, the message."""
    return SpecError(doc.file, doc.line_of(path), field_path((*doc.prefix, *path)), message)
