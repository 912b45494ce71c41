"""Helpers of the benchmark scripts under `bench/`: child processes and CPU pinning (`procs`), wrk runs
(`wrk`), and the summary table and chart (`report`). Not part of the product; nothing here is imported by
the `controlplane`, `router_node` or `worker` packages."""
