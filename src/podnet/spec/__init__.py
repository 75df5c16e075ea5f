"""Parse and validate what the user wrote. Nothing is touched before the whole spec is valid."""

from podnet.spec.loader import load_file, load_sources, load_stored, load_text
from podnet.spec.models import ClusterSpec, Spec
from podnet.spec.sources import Source, read_sources, stored_form

__all__ = [
    "ClusterSpec",
    "Source",
    "Spec",
    "load_file",
    "load_sources",
    "load_stored",
    "load_text",
    "read_sources",
    "stored_form",
]
