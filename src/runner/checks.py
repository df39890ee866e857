"""Checks of option combinations, and of the free-form dataset nodes, that one field's range
cannot express (called by `runner.config.validate`, before a run starts)."""
from omegaconf import DictConfig, OmegaConf

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


def check_training(cfg) -> None:
    """Phases, optimizer, schedule and loss options that only make sense together."""
    if len(cfg.phases) == 0:
        raise ConfigError("phases=[] leaves the run nothing to train; give at least one phase, "
                          "e.g. phases=[{name: train}]")
    optim = cfg.optim
    if len(optim.betas) != 2:
        raise ConfigError(f"optim.betas has {len(optim.betas)} values; give two, e.g. "
                          f"optim.betas=[0.9,0.999]")
    if optim.nesterov and (optim.name != "sgd" or optim.momentum <= 0):
        raise ConfigError(f"optim.nesterov=true needs optim.name=sgd with optim.momentum > 0 "
                          f"(got {optim.name}, momentum {optim.momentum}); set both or drop nesterov")
    if cfg.schedule.name == "step_iter" and cfg.schedule.step_size < 1:
        raise ConfigError(f"schedule.step_size={cfg.schedule.step_size}: schedule.name=step_iter "
                          f"needs a step size >= 1")
    if cfg.train.label_smoothing and cfg.train.loss != "cross_entropy":
        raise ConfigError(f"train.label_smoothing={cfg.train.label_smoothing} needs "
                          f"train.loss=cross_entropy (got {cfg.train.loss}); drop one of them")


def check_datasets(cfg) -> None:
    """Each dataset node has a reader, at least one class and a shape of positive sizes (checked
    before a test level builds synthetic data of that shape)."""
    nodes = [("dataset", cfg.dataset)] + [(f"datasets.{k}", v) for k, v in (cfg.datasets or {}).items()]
    for where, ds in nodes:
        if not isinstance(ds, DictConfig):
            continue
        missing = [k for k in ("reader", "shape", "num_classes") if k not in ds]
        if missing:
            raise ConfigError(f"{where} has no {', '.join(missing)}; a dataset node sets reader, "
                              f"shape and num_classes (see conf/dataset/)")
        n = ds["num_classes"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"{where}.num_classes={n!r} is invalid; valid: an integer >= 1")
        shape = ds["shape"]
        if shape is not None and not (len(shape) and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
            raise ConfigError(f"{where}.shape={list(shape)} is invalid; valid: sizes >= 1, "
                              f"e.g. [1, 28, 28]")
        size = OmegaConf.select(ds, "stream.size", default=None)  # streamed: RGB size x size crops
        if size is not None and shape is not None and list(shape) != [3, size, size]:
            raise ConfigError(f"{where}.stream.size={size} makes images of shape [3, {size}, {size}], "
                              f"but {where}.shape={list(shape)}; set them to agree")


def check_combinations(cfg) -> None:
    check_report(cfg)
    check_subsets(cfg)
    check_training(cfg)


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

    def resolved(path: str):  # None where it does not resolve (validation names it)
        try:
            return OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, path)}),
                                          resolve=True)["v"]
        except Exception:
            return None

    for key in sorted(typed & set(PHASE_SETS)):
        field, value = PHASE_SETS[key], resolved(key)
        if value is None:
            continue
        own = [(i, resolved(f"phases.{i}.{field}")) for i, p in enumerate(phases)
               if p.get(field) is not None and p[field] != "${" + key + "}"]
        own = [(i, v) for i, v in own if v is not None and v != value  # typed too: meant
               and not typed & {"phases", f"phases.{i}", f"phases.{i}.{field}"}]
        if own:
            which = ", ".join(f"phases.{i}.{field}={v}".replace(" ", "") for i, v in own)
            fix = " ".join(f"phases.{i}.{field}={value}".replace(" ", "") for i, _ in own)
            sets = "sets its" if len(own) == 1 else "set their"
            raise ConfigError(f"{key}={value} does not reach every phase: {which} {sets} own; "
                              f"add {fix} (phases without their own {field} follow {key})"
                              .replace(f"{key}={value}", f"{key}={value}".replace(" ", ""), 1))
