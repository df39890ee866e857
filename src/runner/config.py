"""Typed schemas of the runner's own options, registered in Hydra's ConfigStore.

The root config (`conf/config.yaml`) extends `runner_schema`, so a misspelled key or a value of
the wrong type fails at composition with Hydra's message naming it. Model, dataset and method
nodes are free-form `_target_` configs (their keys are checked by struct mode, their types by the
constructor they name).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TrainConfig:
    batch_size: Optional[int] = 256  # None: full batch (gradient descent)
    eval_batch_size: int = 1024
    epochs: int = 10  # maximum epochs of a phase unless the phase says otherwise
    patience: Optional[int] = None  # early stopping on validation loss; None: never stop early
    restore_best: bool = False  # load the best-validation weights at the end of each phase
    select_by: str = "val_loss"  # the best-validation epoch: lowest val_loss | highest val_acc
    val_fraction: float = 0.1  # share of the training set held out for validation
    val_seed: Optional[int] = None  # seed of the train/val split; None: the run's seed
    eval_test: bool = True  # evaluate the test set with validation (needed for test@best-val)
    eval_every: int = 1  # evaluate every k epochs (and at a phase's last); full-batch runs use >1
    loss: str = "cross_entropy"  # cross_entropy | mse (on one-hot targets)
    cache_mb: int = 4096  # keep the deterministic part of the input pipeline precomputed when
    # the float copy of a phase's train+val+test images fits in this many MB (0: never); on a GPU
    # at most half of the free device memory
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler, GPU)
    channels_last: bool = False  # NHWC memory format for convolutional models (GPU tensor cores)
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # true: deterministic kernels, no cudnn.benchmark, no TF32
    # (GPU runs repeat bitwise); false: cudnn.benchmark and TF32 matmuls on a GPU. CPU runs are
    # bitwise reproducible either way.


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0  # coupled L2 (optimizer's weight_decay) on weights
    weight_decay_bias: Optional[float] = None  # None: same as weight_decay
    weight_decay_norm: Optional[float] = None  # normalization layers; None: same as weight_decay
    fused: Optional[bool] = None  # fused optimizer kernels; None: on a GPU only


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | exponential | step | step_iter | plateau
    gamma: float = 1.0  # exponential: lr *= gamma per epoch; step / step_iter / plateau: factor
    milestones: List[int] = field(default_factory=list)  # step: epochs at which lr *= gamma
    step_size: int = 0  # step_iter: lr *= gamma every step_size iterations of a phase
    patience: int = 10  # plateau: epochs without validation improvement
    min_lr: float = 0.0


@dataclass
class SubsetConfig:
    """Which part of the training set a phase sees."""

    fraction: Optional[float] = None  # first fraction of a seeded permutation (warm start)
    n: Optional[int] = None  # first n samples of a seeded permutation (sample-size study)
    chunks: Optional[int] = None  # continual learning: the set is cut into `chunks` pieces ...
    access: str = "full"  # ... and repeat r sees chunks 0..r (full) or chunk r alone (limited)


@dataclass
class PhaseConfig:
    """One stage of a run; every None field falls back to the run-level setting."""

    name: str = "train"
    repeat: int = 1  # run this phase this many times in a row (rounds, continual chunks)
    dataset: Optional[str] = None  # key in `datasets`; None: the main `dataset`
    subset: SubsetConfig = field(default_factory=SubsetConfig)
    transform: List[Any] = field(default_factory=list)  # applied to train, val and test images
    augment: Optional[List[Any]] = None  # train-time augmentation; None: the dataset's own
    epochs: Optional[int] = None
    patience: Optional[int] = None
    lr: Optional[float] = None
    gamma: Optional[float] = None  # schedule factor (exponential decay per epoch)
    milestones: Optional[List[int]] = None
    weight_decay: Optional[float] = None
    reset_optimizer: bool = False  # fresh optimizer state at the start of this phase


@dataclass
class CIConfig:
    """Test levels that shrink any experiment (applied by `runner.ci`; `none` runs it as written).

    smoke: synthetic data of the real shapes, tiny and fast; sizes: synthetic data larger than
    every sample count the config uses (eval batches, Fisher samples, subsets), real batch sizes,
    few steps. An experiment lists its own changes for test levels in `overrides` (every level)
    and `sizes_overrides` (sizes only), as dotted keys; science code never asks for the level.
    """

    level: str = "none"  # none | smoke | sizes
    n_train: Optional[int] = 32  # None: larger than every sample count in the config (sizes)
    n_test: Optional[int] = 16
    max_epochs: int = 1
    max_batches: int = 2  # training steps per epoch
    eval_batches: Optional[int] = 2  # evaluation batches per split; None: the whole split
    batch_size: Optional[int] = 8  # cap on train.batch_size; None: the experiment's own
    max_repeat: int = 2
    width: float = 1.0  # multiplies the model's layer widths (`widths`, `layers`, `width`, ...)
    overrides: Dict[str, Any] = field(default_factory=dict)
    sizes_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig:
    metric: str = "test_acc"  # the summary metric in tables
    at: Optional[str] = None  # end | best (last or best-validation epoch); None: best exactly
    # when train.restore_best (the weights kept are the best epoch's)
    extra: List[str] = field(default_factory=list)  # more summary columns
    rows: List[str] = field(default_factory=list)  # table layout: keys down (config paths or
    cols: List[str] = field(default_factory=list)  # group choices) and across, paper's order
    scale: float = 1.0  # tables show metric x scale (100: percent)
    digits: int = 4  # decimals in tables


@dataclass
class PaperConfig:
    """The paper's value for each cell this experiment can produce."""

    source: str = ""  # e.g. "Oh et al. 2025, Table 1, MNIST (MLP)"
    by: List[str] = field(default_factory=list)  # config choices or paths indexing `values`
    values: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunnerConfig:
    name: str = "run"
    description: str = ""
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch CPU threads; None: torch's default (1 suits tiny models
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
    logger: Any = None  # tracker (conf/logger/): csv (run files only), tensorboard, mlflow, wandb


def register() -> None:
    """Store the schemas outside every config group, so that they are no choice of one
    (`optim=optim_schema`); group files extend them with `- /optim_schema@_here_`."""
    cs = ConfigStore.instance()
    cs.store(name="runner_schema", node=RunnerConfig)
    cs.store(name="optim_schema", node=OptimConfig)
    cs.store(name="schedule_schema", node=ScheduleConfig)
    cs.store(name="ci_schema", node=CIConfig)
