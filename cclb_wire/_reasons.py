"""Why a filter dropped a candidate: the one host type the host rules need.

It lives below both :mod:`cclb_wire.host_types` (which re-exports it, its public
home) and :mod:`cclb_wire.host_rules` (whose ``label_reason`` maps decision
labels to it), so neither of those imports the other's module in a cycle.
"""

from __future__ import annotations

import enum

__all__ = ["PerCandidateReason"]


class PerCandidateReason(str, enum.Enum):
    """Why a filter dropped a candidate, from the plugin's decision label."""

    RateLimited = "rate_limited"
    InsufficientQuota = "insufficient_quota"
    Unhealthy = "unhealthy"
    RejectedByPlugin = "rejected_by_plugin"
