"""The control plane process package: the admin API."""
