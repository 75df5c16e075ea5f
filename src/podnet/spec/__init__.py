"""Parse and validate what the user wrote. Nothing is touched before the whole spec is valid."""

from podnet.spec.loader import load_file, load_text
from podnet.spec.models import ClusterSpec, Spec

__all__ = ["ClusterSpec", "Spec", "load_file", "load_text"]
