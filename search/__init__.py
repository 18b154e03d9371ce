"""How configurations are chosen and run: study specs, Optuna mapping, objective, workers."""
