"""Everything MLflow: each stage's run under its execution's parent run (runs), the machine and library tags
every run carries (machine), the tracking server as a stage sees it (server), and completing an execution's
record after DVC ends (executions)."""
