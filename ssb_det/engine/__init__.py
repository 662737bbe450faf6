"""Training, evaluation and demo logic behind ``tools/train_net.py`` and ``tools/demo.py``."""
from .train import (
    EVAL_RESULTS_FILE,
    Trainer,
    WeightsConventionError,
    check_weights_conventions,
    main,
    setup,
)

__all__ = ["EVAL_RESULTS_FILE", "Trainer", "WeightsConventionError",
           "check_weights_conventions", "main", "setup"]
