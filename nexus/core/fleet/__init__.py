"""Fleet management shared by workers, the admin API and router nodes: discovery of local inference servers
(`discovery`, pure), model lifecycle on Ollama backends (`lifecycle`, pure; `ollama`, its wire format) and the
fleet's Redis state (`store`). docs/fleet.md is the operator's view.

Errors: `FleetError` (nexus.core.errors) <- `BackendCallError` (a backend's lifecycle API failed or answered
out of contract), `OperationConflict` (an operation that cannot start: unknown backend or model, not Ollama).
"""
