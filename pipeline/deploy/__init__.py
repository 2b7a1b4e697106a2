"""Processes: a local cluster under PIPELINE_HOME, and a worker started on any host."""
