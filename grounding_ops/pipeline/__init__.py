"""Airflow-facing glue: the plain functions and operator factories the DAG files wire together.

Modules here import Airflow lazily or only light parts of it; nothing imports torch, transformers,
verl, great_expectations or mlflow at module level, so DAG files that import them parse fast.
"""
