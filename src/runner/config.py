"""Typed schemas of the runner's own options, registered in Hydra's ConfigStore, and their ranges.

The root config (`conf/config.yaml`) extends `runner_schema`, so a misspelled key or a value of
the wrong type fails at composition with Hydra's message naming it. Model, dataset and method
nodes are free-form `_target_` configs (their keys are checked by struct mode, their types by the
constructor they name).

Ranges live here too, beside each field (`valid(default, rule)`): `validate(cfg)` checks every
field against its rule, every number in the config for finiteness, the methods' options and
`tuned` (`runner.method_checks`), and the combinations of `runner.checks`, before anything is built.
A failure is one `ConfigError` line naming the key, the value and the valid range.

`prepare(cfg)` is the config a run trains: its test level written into ordinary options
(`runner.ci.apply`), then validated; every run, sweep job and resumed run goes through it.
"""
import difflib
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from runner import ci, extras, targets
from runner.errors import ConfigError

from runner.ranges import NON_NEGATIVE, POSITIVE, OneOf, Range, at_least  # noqa: F401 (re-exported)
from runner.results import ROW_METRICS


SEED_MAX = 2**32 - 1  # seeds in [0, SEED_MAX] give distinct runs (NumPy's seed is 32 bits)
INT_LIMIT = 2**63  # integers of the config fit a 64-bit integer (torch's, NumPy's)


def valid(default: Any, rule) -> Any:
    """A schema field with its valid values (checked by `validate`; lists: every element)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"valid": rule})
    return field(default=default, metadata={"valid": rule})


@dataclass
class TrainConfig:
    batch_size: Optional[int] = valid(256, at_least(1, "full batch"))  # None: full batch (gradient descent)
    eval_batch_size: int = valid(1024, at_least(1))
    epochs: int = valid(10, at_least(1))  # maximum epochs of a phase unless the phase says otherwise
    patience: Optional[int] = valid(None, at_least(1, "never stop early"))  # early stopping on validation loss; None: never stop early
    restore_best: bool = False  # load the best-validation weights at the end of each phase
    select_by: str = valid("val_loss", OneOf(("val_loss", "val_acc")))  # best-validation epoch: lowest val_loss | highest val_acc
    val_fraction: float = valid(0.1, Range(0, 1, hi_open=True))  # share of the training set held out for validation
    val_seed: Optional[int] = valid(None, Range(0, SEED_MAX, note="the run's seed"))  # seed of the train/val split; None: the run's seed
    eval_test: bool = True  # evaluate the test set with validation (needed for test@best-val)
    fused_seeds: int = valid(1, at_least(1))  # K > 1: seeds seed..seed+K-1 as one batched model
    # in one process, each in its own run directory DIR/seed<N> (runner.training.fused)
    eval_every: int = valid(1, at_least(1))  # evaluate every k epochs (and at a phase's last); full-batch runs use >1
    loss: str = valid("cross_entropy", OneOf(("cross_entropy", "mse")))  # cross_entropy | mse (on one-hot targets)
    label_smoothing: float = valid(0.0, Range(0, 1, hi_open=True))  # cross_entropy's label smoothing (thesis, ResNet50: 0.1)
    cache_mb: int = valid(4096, NON_NEGATIVE)  # keep the deterministic part of the input pipeline precomputed when
    # the float copy of a phase's train+val+test images fits in this many MB (0: never); on a GPU
    # at most half of the free device memory
    precision: str = valid("fp32", OneOf(("fp32", "bf16", "fp16")))  # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler, GPU)
    channels_last: bool = False  # NHWC memory format for convolutional models (GPU tensor cores)
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # true: deterministic kernels, no cudnn.benchmark, no TF32
    # (GPU runs repeat bitwise); false: cudnn.benchmark and TF32 matmuls on a GPU. CPU runs are
    # bitwise reproducible either way.
    diverge_factor: Optional[float] = valid(1e4, Range(1, lo_open=True, note="non-finite only"))
    # an epoch whose mean training loss exceeds this multiple of the run's first batch loss ends
    # the run as `diverged` (so does a non-finite loss, always)
    checkpoint: bool = True  # checkpoint.pt at a phase end 10 s or more after the last one (at each
    # phase end with checkpoint_every) and as below; removed on completion
    checkpoint_every: Optional[int] = valid(None, at_least(1, "phase ends only"))  # also every N epochs
    checkpoint_minutes: Optional[float] = valid(10.0, Range(0, lo_open=True, note="no timer"))
    # also after the first epoch ending this long after the last checkpoint
    save_model: bool = False  # keep the final weights as model.pt (a state_dict)
    # caps (None: no cap) that shorten any run, as test levels do (conf/ci/*.yaml sets them):
    max_epochs: Optional[int] = valid(None, at_least(1, "no cap"))  # epochs of every phase (train.epochs or the phase's own)
    max_batches: Optional[int] = valid(None, at_least(1, "no cap"))  # training steps of an epoch
    max_eval_batches: Optional[int] = valid(None, at_least(1, "the whole split"))  # evaluation batches of each split
    max_batch_size: Optional[int] = valid(None, at_least(1, "no cap"))  # caps train.batch_size (a full batch too)
    max_repeat: Optional[int] = valid(None, at_least(1, "no cap"))  # repeats of a configured phase


@dataclass
class OptimConfig:
    name: str = valid("adam", OneOf(("adam", "sgd", "adamw")))
    lr: float = valid(1e-3, NON_NEGATIVE)
    momentum: float = valid(0.0, Range(0, 1, hi_open=True))
    nesterov: bool = False
    betas: List[float] = valid([0.9, 0.999], Range(0, 1, hi_open=True))
    weight_decay: float = valid(0.0, NON_NEGATIVE)  # coupled L2 (optimizer's weight_decay) on weights
    weight_decay_bias: Optional[float] = valid(None, at_least(0, "as weight_decay"))  # None: same as weight_decay
    weight_decay_norm: Optional[float] = valid(None, at_least(0, "as weight_decay"))  # normalization layers; None: same as weight_decay
    weight_decay_form: str = valid("half", OneOf(("half", "full")))  # the penalty a decay lambda stands for:
    # half: loss + lambda/2 ||w||^2 (gradient + lambda w, torch's weight_decay); full: loss + lambda ||w||^2
    # (Keras' l2(lambda) regularizer, gradient + 2 lambda w)
    fused: Optional[bool] = None  # fused optimizer kernels; None: on a GPU only


@dataclass
class ScheduleConfig:
    name: str = valid("constant", OneOf(("constant", "exponential", "step", "step_iter", "plateau")))
    gamma: float = valid(1.0, POSITIVE)  # exponential: lr *= gamma per epoch; step / step_iter / plateau: factor
    milestones: List[int] = valid([], at_least(1))  # step: epochs at which lr *= gamma
    step_size: int = valid(0, NON_NEGATIVE)  # step_iter: lr *= gamma every step_size iterations of a phase
    patience: int = valid(10, at_least(1))  # plateau: epochs without validation improvement
    min_lr: float = valid(0.0, NON_NEGATIVE)
    warmup_epochs: int = valid(0, NON_NEGATIVE)  # linear warm-up: epoch e < warmup_epochs runs at (e + 1) / warmup


@dataclass
class SubsetConfig:
    """Which part of the training set a phase sees."""

    fraction: Optional[float] = valid(None, Range(0, 1, lo_open=True, note="all"))  # first fraction of a seeded permutation (warm start)
    n: Optional[int] = valid(None, at_least(1, "all"))  # first n samples of a seeded permutation (sample-size study)
    chunks: Optional[int] = valid(None, at_least(1, "no chunks"))  # continual learning: the set is cut into `chunks` pieces ...
    access: str = valid("full", OneOf(("full", "limited")))  # ... and repeat r sees chunks 0..r (full) or chunk r alone (limited)


@dataclass
class PhaseConfig:
    """One phase of a run; every None field falls back to the run-level setting."""

    name: str = "train"
    repeat: int = valid(1, at_least(1))  # run this phase this many times in a row (rounds, continual chunks)
    dataset: Optional[str] = None  # key in `datasets`; None: the main `dataset`
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    transform: List[Any] = field(default_factory=list)  # applied to train, val and test images
    augment: Optional[List[Any]] = None  # train-time augmentation; None: the dataset's own
    epochs: Optional[int] = valid(None, at_least(1, "train.epochs"))
    patience: Optional[int] = valid(None, at_least(1, "train.patience"))
    lr: Optional[float] = valid(None, at_least(0, "optim.lr"))
    gamma: Optional[float] = valid(None, Range(0, lo_open=True, note="schedule.gamma"))  # schedule factor (exponential decay per epoch)
    milestones: Optional[List[int]] = valid(None, at_least(1, "schedule.milestones"))
    weight_decay: Optional[float] = valid(None, at_least(0, "optim.weight_decay"))
    reset_optimizer: bool = False  # fresh optimizer state at the start of this phase


@dataclass
class CIConfig:
    """Test levels that shrink any experiment (`ci=smoke`, `ci=sizes`; `none` runs it as written).

    A level's file (conf/ci/*.yaml) sets the trainer's caps (`train.max_epochs`, ...) and this
    node; `runner.ci.apply` writes the rest into ordinary options before the run is built:
    synthetic data of each dataset's shape as its reader (`n_train`, `n_test`: at sizes larger
    than every sample count the config uses), narrower layers (`width`), no checkpoints, and the
    experiment's own changes for test levels, dotted keys in `overrides` (every level) and
    `sizes_overrides` (sizes only), each of which must name a key of the config. Nothing that
    trains reads this node.
    """

    level: str = valid("none", OneOf(("none", "smoke", "sizes")))
    n_train: Optional[int] = valid(32, at_least(1, "larger than every count"))  # synthetic training samples; None: larger than every sample count in the config
    n_test: Optional[int] = valid(16, at_least(1, "larger than every count"))  # synthetic test samples
    width: float = valid(1.0, POSITIVE)  # multiplies the model's layer widths (`widths`, `layers`, `width`, ...)
    overrides: Dict[str, Any] = field(default_factory=dict)
    sizes_overrides: Dict[str, Any] = field(default_factory=dict)
    checkpoints: bool = False  # test levels write no checkpoints unless true (resume tests)


@dataclass
class ReportConfig:
    metric: str = valid("test_acc", OneOf(ROW_METRICS))  # the summary metric in tables
    at: Optional[str] = valid(None, OneOf(("end", "best", None)))  # end | best (last or best-validation epoch); None: best exactly
    # when train.restore_best (the weights kept are the best epoch's)
    extra: List[str] = field(default_factory=list)  # more summary columns
    rows: List[str] = field(default_factory=list)  # table layout: keys down (config paths or
    cols: List[str] = field(default_factory=list)  # group choices) and across, paper's order
    scale: float = valid(1.0, POSITIVE)  # tables show metric x scale (100: percent)
    digits: int = valid(4, Range(0, 12))  # decimals in tables


@dataclass
class PaperConfig:
    """The paper's value for each cell this experiment can produce."""

    source: str = ""  # e.g. "Oh et al. 2025, Table 1, MNIST (MLP)"
    by: List[str] = field(default_factory=list)  # config choices or paths indexing `values`
    values: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DistributedConfig:
    """Data-parallel training over torchrun's ranks (runner.distributed)."""

    enabled: bool = False  # true: run under `torchrun --nproc_per_node=N -m runner ...`
    backend: Optional[str] = None  # None: nccl on GPUs, gloo on the CPU
    sync_bn: bool = False  # batch-norm statistics over all ranks (SyncBatchNorm, GPUs only)


@dataclass
class RunnerConfig:
    name: str = "run"
    description: str = ""
    seed: int = valid(0, Range(0, SEED_MAX))  # NumPy takes 32 bits: larger seeds would alias
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = valid(None, at_least(1, "torch's default"))  # torch CPU threads; None: torch's default (1 suits tiny models
    # and parallel sweeps: hydra/launcher=joblib hydra.launcher.n_jobs=2)
    data_root: str = "data"
    progress: Optional[bool] = None  # tqdm bars; None: only on a terminal
    dataset: Any = None
    datasets: Dict[str, Any] = field(default_factory=dict)  # further datasets phases can name
    model: Any = None
    model_transforms: List[Any] = field(default_factory=list)  # applied to every model built
    # (`_target_` callables taking the model): masks, filter bases, frozen parts
    method: Any = None
    extra_methods: List[Any] = field(default_factory=list)  # stacked after `method`
    tuned: Dict[str, Any] = field(default_factory=dict)  # the paper's best hyperparameters
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    phases: List[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    ci: CIConfig = field(default_factory=CIConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: Any = None  # tracker (conf/logger/): csv (run files only), tensorboard, mlflow, wandb
    resume: Optional[str] = None  # DIR: continue that run from its checkpoint; auto (sweeps):
    # skip jobs whose config completed under the sweep's parent directory, resume unfinished ones
    target_allowlist: List[str] = field(default_factory=list)  # modules of your own code whose
    # components (runner.targets.register, Method subclasses) `_target_` may name, besides
    # runner and methods


def register() -> None:
    """Store the schemas outside every config group, so that they are no choice of one
    (`optim=optim_schema`); group files extend them with `- /optim_schema@_here_`."""
    cs = ConfigStore.instance()
    cs.store(name="runner_schema", node=RunnerConfig)
    cs.store(name="optim_schema", node=OptimConfig)
    cs.store(name="schedule_schema", node=ScheduleConfig)
    cs.store(name="ci_schema", node=CIConfig)


# -- validation -----------------------------------------------------------------------------------
def invalid(key: str, value: Any, rule) -> ConfigError:
    shown = "null" if value is None else repr(value)
    return ConfigError(f"{key}={shown} is invalid; valid: {rule}")


def _check_fields(schema, node, prefix: str) -> None:
    for f in fields(schema):
        value, key = node[f.name], prefix + f.name
        rule = f.metadata.get("valid")
        if rule is not None and value is not None:
            for v in (value if isinstance(value, ListConfig) else [value]):
                if not rule.ok(v):
                    raise invalid(key, v, rule)
        if value is None:
            continue
        if is_dataclass(f.type):
            _check_fields(f.type, value, key + ".")
        elif typing.get_origin(f.type) is list and is_dataclass(typing.get_args(f.type)[0]):
            for i, item in enumerate(value):
                _check_fields(typing.get_args(f.type)[0], item, f"{key}.{i}.")


def _check_finite(node: Any, key: str) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{key}.{i}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} is not a finite number; give a finite value")
    elif isinstance(node, int) and not isinstance(node, bool) and not -INT_LIMIT < node < INT_LIMIT:
        raise ConfigError(f"{key}={node} does not fit a 64-bit integer; give a smaller value")


def _check_known_keys(schema, node, prefix: str) -> None:
    """Every key of a schema-typed node is a field of its schema (`+train.epoch=3` is a typo,
    though Hydra's `+` adds it)."""
    if not isinstance(node, DictConfig):
        return
    names = [f.name for f in fields(schema)]
    for key in node.keys():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ConfigError(f"{prefix}{key} is not an option{hint}; valid keys"
                              f"{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}")
    for f in fields(schema):
        value = node[f.name]
        if is_dataclass(f.type):
            _check_known_keys(f.type, value, prefix + f.name + ".")
        elif typing.get_origin(f.type) is list and is_dataclass(typing.get_args(f.type)[0]) \
                and isinstance(value, ListConfig):
            for i, item in enumerate(value):
                _check_known_keys(typing.get_args(f.type)[0], item, f"{prefix}{f.name}.{i}.")


def _missing(node: Any, key: str = ""):
    """The keys of the values left `???` in plain containers."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _missing(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _missing(v, f"{key}.{i}")
    elif node == "???":
        yield key


def check_missing(node: Dict[str, Any]) -> None:
    """Every value of the config `node` (plain containers) is set: a base, conf/family_*.yaml,
    leaves some `???` to each experiment."""
    missing = sorted(_missing(node))
    if missing:
        raise ConfigError(f"{missing[0]} is not set (??? in the experiment's base); set it in the "
                          f"experiment file or on the command line")


def resolve(cfg: DictConfig) -> Dict[str, Any]:
    """The config as plain containers, interpolations resolved (one line where one does not)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation that does not resolve
        check_missing(OmegaConf.to_container(cfg))  # the clearer cause where a value is unset
        raise ConfigError(" ".join(str(e).split())) from None


def check_targets(cfg: DictConfig, resolved: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The resolved config (`resolved` where given), after checking that every `_target_` in it
    sits in a slot and names a callable of that slot's kind (`runner.targets`; nothing else is
    ever imported)."""
    resolved = resolve(cfg) if resolved is None else resolved
    allowlist = resolved.get("target_allowlist") or []
    targets.check_allowlist(allowlist)
    targets.check_tree(resolved, allowlist)
    return resolved


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` (one line) at the first option outside its valid values."""
    from runner.checks import check_combinations, check_datasets
    from runner.method_checks import check_method, check_tuned

    resolved = resolve(cfg)
    check_missing(resolved)
    check_targets(cfg, resolved)
    _check_known_keys(RunnerConfig, cfg, "")
    _check_fields(RunnerConfig, cfg, "")
    _check_finite(resolved, "")
    for where, node in [("method", resolved.get("method"))] + [
            (f"extra_methods.{i}", m) for i, m in enumerate(resolved.get("extra_methods") or [])]:
        check_method(node, where)
    check_tuned(cfg, resolved)
    check_datasets(cfg)
    logger = (resolved.get("logger") or {}).get("name")
    if logger in extras.EXTRAS:  # set in an experiment file: refused before the run starts
        extras.require(logger, f"logger={logger}")
    check_combinations(cfg)


def prepare(cfg: DictConfig) -> DictConfig:
    """The config a run trains, before anything is built: a new config with its test level
    written into ordinary options (`runner.ci.apply`; a copy as it is without one), validated."""
    from runner.checks import check_datasets

    if ci.level_of(cfg):  # what the config names, also where a test level replaces it
        check_targets(cfg)
        check_datasets(cfg)
    cfg = ci.apply(cfg)
    validate(cfg)
    return cfg
