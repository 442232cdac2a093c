"""Running labcycle on Prefect workers: the work pools (pools.py) and the deployments' pull step (steps.py)."""
