"""Benchmarks for podnet, run with ``make bench`` or ``python -m bench``.

Each suite builds a topology with podnet and with the plain tools podnet competes with
(a shell script of ``ip`` commands, the reference CNI plugins), times both, and removes
everything it created, also on error or Ctrl-C. Everything lives in network namespaces
with a per-run name prefix; the root namespace is never touched.
"""
