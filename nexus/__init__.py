"""Nexus: a distributed control plane for LLM inference routing. Layers: docs/architecture.md."""
