"""BN-configurable PyTorch models, built-in datasets and a fault-aware trainer.

Depends on torch and numpy only; knows nothing of Optuna, HTTP or SQL.
"""

from models.config import (
    EpochMetrics,
    Init,
    Optimizer,
    Placement,
    Schedule,
    TrainConfig,
    TrainResult,
    TrainStatus,
)
from models.errors import ConfigError, DatasetError, UnknownNameError
from models.registry import DATASETS, MODELS, Param

__all__ = [
    "DATASETS",
    "MODELS",
    "ConfigError",
    "DatasetError",
    "EpochMetrics",
    "Init",
    "Optimizer",
    "Param",
    "Placement",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "TrainStatus",
    "UnknownNameError",
]
