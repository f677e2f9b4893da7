"""MLflow side of the platform: logging evaluations, promotion with aliases, version listings.

:mod:`tracking` (evaluation output folder -> MLflow run, W&B), :mod:`promotion` (the
champion gate), :mod:`models` (paginated version listing for the Airflow page) and
:mod:`cli` (``grounding-ops promote`` and ``grounding-ops log-evaluation``). MLflow is
imported inside functions only.
"""
