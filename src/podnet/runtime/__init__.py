"""Processes podnet runs for a cluster, each with a pidfile and a log in its state directory."""
