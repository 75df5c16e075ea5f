"""podnet: container and Kubernetes networking built on the real Linux kernel."""

__version__ = "0.1.0"
