"""Pure functions from a Spec (+ persisted allocations) to the desired State. No I/O, no root."""

from podnet.plan.cluster import Plan, plan
from podnet.plan.topology import NodeInfo, PodInfo, Topology

__all__ = ["NodeInfo", "Plan", "PodInfo", "Topology", "plan"]
