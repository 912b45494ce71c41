"""The operator's dashboard, served by the admin app under `/dashboard/` (see `router`)."""

from nexus.controlplane.dashboard.hub import DashboardHub
from nexus.controlplane.dashboard.router import router

__all__ = ["DashboardHub", "router"]
