"""Where a spec comes from: files, directories and standard input, as ``kubectl apply -f`` reads them.

``podnet up -f a.yaml -f dir/ -f -`` reads each file; a directory's ``*.yaml``, ``*.yml`` and
``*.json`` files in name order (not its subdirectories, as kubectl without ``-R``); ``-`` the
standard input. Every file keeps its own name, so an error names the file and line to fix.

What ``up`` applied is stored (``Store.save(allocations, text, file)``) so that ``status``
and ``trace`` read it again: one source as its text and resolved path, exactly as before
several were possible; several as a JSON envelope of (path, text) pairs in the text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from podnet.errors import SpecError, UsageError

STDIN = "-"
STDIN_NAME = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_ENVELOPE = "podnetSources"  # no manifest has it: a document with only this key is no object


@dataclass(frozen=True)
class Source:
    name: str  # as errors name it: the path as given, or <stdin>
    text: str


def read_sources(arguments: Iterable[str], stdin: BinaryIO | None = None) -> list[Source]:
    """The sources the arguments name, in order; SpecError (exit 2) naming what cannot be read."""
    sources: list[Source] = []
    took_stdin = False
    for argument in arguments:
        if argument == STDIN:
            if took_stdin:
                raise UsageError("standard input (-) can be read only once")
            took_stdin = True
            sources.append(Source(STDIN_NAME, decode((stdin or sys.stdin.buffer).read(), STDIN_NAME)))
            continue
        path = Path(argument)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            if not files:
                raise SpecError(argument, None, "", f"no {', '.join(MANIFEST_SUFFIXES)} files in this directory")
            sources.extend(_read_file(str(p)) for p in files)
        else:
            sources.append(_read_file(argument))
    if not sources:
        raise UsageError(
            "no spec given: name a file, a directory or - (standard input), e.g. podnet up -f cluster.yaml"
        )
    return sources


def _read_file(name: str) -> Source:
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise SpecError(name, None, "", f"cannot read file: {exc.strerror}") from None
    return Source(name, decode(data, name))


def decode(data: bytes, name: str) -> str:
    """UTF-8 text (a byte-order mark allowed, as YAML allows), or an error at the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(
            name, line, "", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {column} (save the file as UTF-8)"
        ) from None


def stored_form(sources: list[Source]) -> tuple[str, str]:
    """(text, file) for ``Store.save``: what :func:`from_stored` turns back into these sources."""
    names = [s.name if s.name == STDIN_NAME else str(Path(s.name).resolve()) for s in sources]
    if len(sources) == 1:
        return sources[0].text, names[0]
    envelope = {_ENVELOPE: [{"file": n, "text": s.text} for n, s in zip(names, sources, strict=True)]}
    return json.dumps(envelope), ", ".join(names)


def from_stored_form(text: str, file: str) -> list[Source]:
    if text.startswith(f'{{"{_ENVELOPE}"'):
        return [Source(item["file"], item["text"]) for item in json.loads(text)[_ENVELOPE]]
    return [Source(file, text)]
