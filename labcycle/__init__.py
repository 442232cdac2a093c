"""labcycle: the LAB method as a resumable, incremental Prefect DAG."""

__version__ = "0.1.0"
