from __future__ import annotations

# The same real-service fixtures as the platform suite (S3 via moto, MLflow, Docker).
pytest_plugins = ["grounding_ops.testing"]
