"""The admin API: FastAPI under /admin/v1, one router per resource. See `app.create_admin_app`."""

from nexus.controlplane.admin.app import AdminAuthError, check_admin_token, create_admin_app, generate_token

__all__ = ["AdminAuthError", "check_admin_token", "create_admin_app", "generate_token"]
