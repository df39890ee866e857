"""Checks of option combinations that one field's range cannot express (called by
`runner.config.validate`, before a run starts)."""
from omegaconf import OmegaConf

from runner.errors import ConfigError

REPORT_AT = ("end", "best")
GROUP_KEYS = ("experiment", "method", "dataset", "model", "optim", "schedule", "ci", "space")


def report_at(cfg) -> str:
    """Where a phase's metrics are read: `report.at`, or by default the best-validation epoch
    exactly when `train.restore_best` keeps that epoch's weights."""
    if cfg.report.at is None:
        return "best" if cfg.train.restore_best else "end"
    return cfg.report.at


def check_report(cfg) -> None:
    """`report.at` is end, best or null, and never `end` on weights restored to the best epoch;
    the table layout names group choices or existing config keys."""
    at = cfg.report.at
    if at is not None and at not in REPORT_AT:
        raise ConfigError(f"report.at={at!r}; valid: {', '.join(REPORT_AT)} (or null: best "
                          f"when train.restore_best)")
    if at == "end" and cfg.train.restore_best:
        raise ConfigError("report.at=end with train.restore_best=true would report the last "
                          "epoch's accuracy for weights restored to the best-validation epoch; "
                          "set report.at=best (or leave it unset) or train.restore_best=false")
    for side in ("rows", "cols"):
        for key in cfg.report[side]:
            if key not in GROUP_KEYS and OmegaConf.select(cfg, key, default=None) is None:
                raise ConfigError(f"report.{side} names {key!r}, which is neither a config key of "
                                  f"this run nor a group ({', '.join(GROUP_KEYS)}); fix or drop "
                                  f"it, e.g. report.{side}=[method]")


def check_subsets(cfg) -> None:
    """A phase takes one kind of subset, and continual chunks cover its repeats."""
    for i, phase in enumerate(cfg.phases):
        sub = phase.subset
        given = [k for k in ("fraction", "n", "chunks") if sub[k] is not None]
        if len(given) > 1:
            raise ConfigError(f"phases.{i}.subset sets {' and '.join(given)}; set only one of "
                              f"fraction, n, chunks")
        if sub.chunks is not None and phase.repeat > sub.chunks:
            raise ConfigError(f"phases.{i}.repeat={phase.repeat} exceeds phases.{i}.subset.chunks="
                              f"{sub.chunks} (repeat r trains on chunk r); set repeat <= chunks")


def check_combinations(cfg) -> None:
    check_report(cfg)
    check_subsets(cfg)


# run-level options that a phase may set for itself (runner.config.PhaseConfig)
PHASE_SETS = {"train.epochs": "epochs", "train.patience": "patience", "optim.lr": "lr",
              "schedule.gamma": "gamma", "schedule.milestones": "milestones",
              "optim.weight_decay": "weight_decay"}


def check_shadowed(cfg, overrides) -> None:
    """A command-line value of a run-level option reaches every phase: a phase that sets its own
    different value (not an interpolation of the option, nor typed on the same command line) is
    refused, naming the phase key."""
    typed = {o.split("=", 1)[0].lstrip("+~") for o in overrides or [] if "=" in o}
    if not typed & set(PHASE_SETS):
        return
    phases = OmegaConf.to_container(cfg.phases, resolve=False)

    def resolved(path: str):
        return OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, path)}),
                                      resolve=True)["v"]

    for key in sorted(typed & set(PHASE_SETS)):
        field, value = PHASE_SETS[key], resolved(key)
        own = [(i, resolved(f"phases.{i}.{field}")) for i, p in enumerate(phases)
               if p.get(field) is not None and p[field] != "${" + key + "}"]
        own = [(i, v) for i, v in own if v != value  # a phase value typed too is meant
               and not typed & {"phases", f"phases.{i}", f"phases.{i}.{field}"}]
        if own:
            which = ", ".join(f"phases.{i}.{field}={v}".replace(" ", "") for i, v in own)
            fix = " ".join(f"phases.{i}.{field}={value}".replace(" ", "") for i, _ in own)
            sets = "sets its" if len(own) == 1 else "set their"
            raise ConfigError(f"{key}={value} does not reach every phase: {which} {sets} own; "
                              f"add {fix} (phases without their own {field} follow {key})"
                              .replace(f"{key}={value}", f"{key}={value}".replace(" ", ""), 1))
