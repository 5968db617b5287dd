"""What runs inside a Ray worker: the fold task and its training core.

Imports only torch and numpy (never services or api), so the core runs and is
benchmarked with no Ray, MLflow or database.
"""
