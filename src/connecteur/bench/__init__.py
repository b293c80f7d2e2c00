"""`connecteur bench`: connecteur's engines and standard-library peers, measured side by side.

The command line (``connecteur bench``) drives it; each module is one part:

- `orchestrator`: the targets, the workloads and the settings; `prepare` plans
  a run, `run` measures it (this process only orchestrates);
- `servers`: every server measured, run as ``python -m connecteur.bench.servers
  TARGET`` (connecteur's engines and the standard-library peers);
- `client`: the client process, ``python -m connecteur.bench.client``, and
  the rr, pipeline, bulk, many and idle workloads; `scale` and `connection`
  hold the scale and client workloads, `job` what every workload shares;
- `processes`: starting and stopping the server and client processes;
- `proc`: what Linux's /proc says about a process (CPU time, memory, threads);
- `report`: the table, the progress, ``--json`` and ``--plot``;
- `check`: the performance targets of ``--check`` and their verdicts.

This module imports none of them: a server process imports only what it
serves with, so what it measures is not weighed down by the orchestrator.
The bench uses connecteur's public names only, as any user's program would.
"""
