"""Names in the model registry, written once: training registers and promotes under them
(``training.tracking``), the service and the CLI resolve references to them
(``models.resolver``)."""

from __future__ import annotations

MODEL_NAME = "nextstep"  # the registered model
CHAMPION = "champion"  # the alias served by default
CHALLENGER = "challenger"  # the alias of a version the promotion gate refused
DEFAULT_MODEL_URI = f"models:/{MODEL_NAME}@{CHAMPION}"
