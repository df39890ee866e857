"""Checks of option combinations that one field's type cannot express, run before a run starts."""
from omegaconf import OmegaConf

from runner.errors import RunnerError

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
        raise RunnerError(f"report.at={at!r}; valid: {', '.join(REPORT_AT)} (or null: best "
                          f"when train.restore_best)")
    if at == "end" and cfg.train.restore_best:
        raise RunnerError("report.at=end with train.restore_best=true would report the last "
                          "epoch's accuracy for weights restored to the best-validation epoch; "
                          "set report.at=best (or leave it unset) or train.restore_best=false")
    for side in ("rows", "cols"):
        for key in cfg.report[side]:
            if key not in GROUP_KEYS and OmegaConf.select(cfg, key, default=None) is None:
                raise RunnerError(f"report.{side} names {key!r}, which is neither a config key of "
                                  f"this run nor a group ({', '.join(GROUP_KEYS)}); fix or drop "
                                  f"it, e.g. report.{side}=[method]")
