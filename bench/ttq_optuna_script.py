"""The one-off Optuna script an ML engineer writes today: sides (a) and (b) of
``bench/bench_time_to_quality.py``.

Sequential ``study.optimize`` on an in-memory study, TPE with a seed, a textbook PyTorch loop
(``DataLoader(TensorDataset, shuffle=True)``, SGD with momentum and weight decay 5e-4, cosine
schedule stepped per batch, PyTorch's default weight init, torch's default thread count), final
validation accuracy as the objective. With ``--pruner hyperband`` it validates after every epoch,
reports to Optuna and asks ``HyperbandPruner``; without, it validates once at the end. It does not
stop a diverged run early (a textbook loop trains on through NaN; NaN logits score as class 0).

The task (dataset, model, epochs, trial budget) is read from the bnsweep spec the other side runs,
so both sides train the same thing; the search space below is the spec's, written as
``suggest_*`` calls. The model and the data split come from bnsweep's registry, so architecture
and data are identical. Each finished trial is written as one JSON line (its completion time in
seconds since the epoch), as it finishes:

    PYTHONPATH=. .venv/bin/python bench/ttq_optuna_script.py examples/bench-ttq-mnist1d.yaml \
        --seed 0 --pruner hyperband --out trials.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F
import yaml
from optuna.trial import FrozenTrial, TrialState
from torch.utils.data import DataLoader, TensorDataset

from models.data import load_dataset
from models.layers import NormSpec, Placement
from models.registry import MODELS

# The spec's search space, as the script states it (bench_time_to_quality checks they agree).
SEARCH_SPACE = {
    "batch_size": {"choices": [32, 64, 128, 256]},
    "learning_rate": {"low": 0.003, "high": 1.0, "log": True},
    "momentum": {"low": 0.8, "high": 0.95},
    "bn_momentum": {"low": 0.01, "high": 0.5, "log": True},
    "bn_placement": {"choices": ["before_activation", "after_activation", "none"]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="the bnsweep spec whose task to run")
    parser.add_argument("--seed", type=int, default=0, help="TPE seed")
    parser.add_argument("--pruner", choices=["none", "hyperband"], default="none")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per trial")
    args = parser.parse_args()
    spec = yaml.safe_load(args.spec.read_text())
    epochs = int(spec["training"]["epochs"])
    n_trials = int(spec["budget"]["n_trials"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    data = load_dataset(spec["dataset"]["name"], spec["dataset"].get("params", {}))
    builder = MODELS.get(spec["model"]["name"]).builder
    model_params = spec["model"].get("params", {})
    train_set = TensorDataset(data.x_train, data.y_train)
    pruning = args.pruner == "hyperband"

    def val_accuracy(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return (model(data.x_val).argmax(1) == data.y_val).float().mean().item()

    def objective(trial: optuna.Trial) -> float:
        batch_size = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
        lr = trial.suggest_float("learning_rate", 0.003, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.8, 0.95)
        bn_momentum = trial.suggest_float("bn_momentum", 0.01, 0.5, log=True)
        placement = trial.suggest_categorical(
            "bn_placement", ["before_activation", "after_activation", "none"]
        )
        torch.manual_seed(0)
        norm = NormSpec(placement=Placement(placement), bn_momentum=bn_momentum)
        model = builder(data.input_shape, data.num_classes, norm, **model_params)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=5e-4)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
        for epoch in range(1, epochs + 1):
            model.train()
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            if pruning:
                trial.report(val_accuracy(model), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return val_accuracy(model)

    out = args.out.open("w", buffering=1)  # line-buffered: a line per trial as it finishes

    def log_trial(_: optuna.Study, trial: FrozenTrial) -> None:
        assert trial.datetime_complete is not None
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value if trial.state is TrialState.COMPLETE else None,
            "t_complete": trial.datetime_complete.timestamp(),
            "params": trial.params,
        }
        out.write(json.dumps(row) + "\n")

    pruner = (
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
        if pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed), pruner=pruner
    )
    study.optimize(objective, n_trials=n_trials, callbacks=[log_trial])
    out.close()
    threads = torch.get_num_threads()
    print(f"best {study.best_value:.4f} {study.best_params} (torch threads {threads})")


if __name__ == "__main__":
    main()
