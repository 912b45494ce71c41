"""Backend adapters: pure translation between the OpenAI wire format Nexus speaks and other APIs."""
