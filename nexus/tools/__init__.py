"""Test and demo tools: fake backend, local cluster harness, nginx config generator."""
