"""Tables 2 and 3 and Figure 2 of the reinitialization paper (Alabdulmohsin et al. 2021): Table 2
from run directories beside the paper's own (`data/reinit_table2.csv`), the exact binomial test
with Holm's correction of Table 3, and the decision tree of Figure 2
(`python -m runner.analysis.reinit table2|table3|tree`)."""
from __future__ import annotations

from itertools import permutations
from pathlib import Path
from typing import Iterable, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from runner.analysis.common import AnalysisError, completed, experiments, save, value  # noqa: E402


METHODS = ["bl", "welsr", "dsd", "wels", "fc", "lw"]
LETTERS = dict(zip(METHODS, "BRDWFL"))
ARCHS = {"scnn": "scnn", "vgg16_ln": "vgg16", "mobilenet_v1": "mobilenet", "resnet50": "resnet50"}
SETTINGS = {"none": (0, 0.0), "aug": (1, 0.0), "aug_dropout": (1, 0.25)}  # augmentation, dropout
DATASETS = {  # Table 4: training examples, classes
    "oxford_pets": (3680, 37), "stanford_dogs": (12000, 120), "cars196": (8144, 196),
    "caltech101": (3060, 101), "cassava": (5656, 4), "cub200_2010": (3000, 200)}
PAPER_TABLE2 = Path(__file__).parent / "data" / "reinit_table2.csv"
PAPER = "Alabdulmohsin et al. 2021"


# -- Table 2 ------------------------------------------------------------------------------------
def paper_table2() -> pd.DataFrame:
    return pd.read_csv(PAPER_TABLE2, comment="#")


def results_table2(dirs: Iterable) -> pd.DataFrame:
    """Our Table 2 rows from run directories: mean and std [%] over seeds of each cell."""
    runs = completed(dirs, "runs of the reinit_table2_* experiments")
    other = [r for r in runs if value(r, "dataset.name") not in DATASETS
             or value(r, "model") not in ARCHS or value(r, "method") not in METHODS]
    if other:
        raise AnalysisError(f"Table 2 needs runs of the reinit_table2_* experiments (methods "
                            f"{', '.join(METHODS)} on {', '.join(DATASETS)}); {other[0]['_dir']} "
                            f"is a run of {experiments(other)}")
    df = pd.DataFrame([{"setting": value(r, "tuned.setting") or "none",
                        "dataset": value(r, "dataset.name"), "arch": ARCHS[value(r, "model")],
                        "method": value(r, "method"), "acc": 100 * r["summary"]["test_acc"]}
                       for r in runs])
    g = df.groupby(["setting", "dataset", "arch", "method"], sort=False)["acc"]
    return g.agg(acc="mean", std="std").reset_index()


def format_table2(ours: pd.DataFrame, paper: Optional[pd.DataFrame] = None) -> str:
    """Markdown: one row per (setting, dataset, arch), `ours (paper)` per method."""
    paper = paper_table2() if paper is None else paper
    key = ["setting", "dataset", "arch"]
    merged = ours.merge(paper, on=key + ["method"], how="left", suffixes=("", "_paper"))
    lines = ["| setting | dataset | arch | " + " | ".join(METHODS) + " |",
             "|---|---|---|" + "---|" * len(METHODS)]
    for cell, g in merged.groupby(key, sort=False):
        by = g.set_index("method")
        vals = []
        for m in METHODS:
            if m not in by.index:
                vals.append("")
                continue
            row = by.loc[m]
            std = "" if pd.isna(row["std"]) else f" ± {row['std']:.1f}"
            ref = "" if pd.isna(row["acc_paper"]) else f" ({row['acc_paper']:.1f})"
            vals.append(f"{row['acc']:.1f}{std}{ref}")
        lines.append("| " + " | ".join(map(str, cell)) + " | " + " | ".join(vals) + " |")
    return "\n".join(lines)


# -- Table 3: exact binomial (sign) test with Holm's step-down correction -----------------------
def sign_test(row: np.ndarray, col: np.ndarray) -> float:
    """One-sided exact binomial test that `col` beats `row` in matched experiments (ties dropped)."""
    wins, losses = int(np.sum(col > row)), int(np.sum(col < row))
    if wins + losses == 0:
        return 1.0
    return binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue


def holm(pvalues: List[float], alpha: float = 0.05) -> List[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level alpha."""
    order = np.argsort(pvalues, kind="stable")
    m, reject = len(pvalues), [False] * len(pvalues)
    for i, j in enumerate(order):
        if pvalues[j] > alpha / (m - i):
            break
        reject[j] = True
    return reject


def table3(df: pd.DataFrame, alpha: float = 0.05, family: str = "arch") -> pd.DataFrame:
    """p-values and marks of "column method beats row method", per architecture.

    Matched experiments are (setting, dataset) pairs. Mark '*' for p < alpha (the paper's star),
    'o' where the test survives Holm's correction (the paper's circle) over the ordered pairs
    of one architecture (`family='arch'`) or of all architectures (`'all'`).
    """
    wide = df.pivot_table(index=["arch", "setting", "dataset"], columns="method", values="acc")
    rows = []
    present = wide.index.get_level_values(0).unique()
    for arch in [a for a in ARCHS.values() if a in present] + [a for a in present
                                                                 if a not in ARCHS.values()]:
        w = wide.loc[arch]
        for r, c in permutations([m for m in METHODS if m in w.columns], 2):
            ok = w[[r, c]].dropna()
            rows.append({"arch": arch, "row": r, "col": c, "n": len(ok),
                         "p": sign_test(ok[r].to_numpy(), ok[c].to_numpy())})
    out = pd.DataFrame(rows)
    groups = out.groupby("arch").groups if family == "arch" else {"all": out.index}
    out["holm"] = False
    for idx in groups.values():
        out.loc[idx, "holm"] = holm(out.loc[idx, "p"].tolist(), alpha)
    out["mark"] = np.where(out["holm"], "o", np.where(out["p"] < alpha, "*", ""))
    out.attrs.update(alpha=alpha, family=family)
    return out


def format_table3(t3: pd.DataFrame, source: str = "the paper's Table 2") -> str:
    """Markdown in the paper's layout, with a title and a legend of the marks and letters."""
    alpha, family = t3.attrs.get("alpha", 0.05), t3.attrs.get("family", "arch")
    archs = list(dict.fromkeys(t3["arch"]))
    head = "| | " + " | ".join(f"{a} {LETTERS[m]}" for a in archs for m in METHODS) + " |"
    lines = [f"Table 3 (Alabdulmohsin et al. 2021): does the column method beat the row method? "
             f"Sign test over the matched (setting, dataset) cells of {source}.", "",
             head, "|---|" + "---|" * (len(archs) * len(METHODS))]
    marks = {(a, r, c): k for a, r, c, k in t3[["arch", "row", "col", "mark"]].itertuples(False)}
    for r in METHODS:
        cells = [marks.get((a, r, c), "") for a in archs for c in METHODS]
        lines.append(f"| {LETTERS[r]} | " + " | ".join(cells) + " |")
    scope = "within each architecture" if family == "arch" else "over all architectures"
    lines += ["", f"*: p < {alpha} (one-sided exact binomial test; ties dropped)",
              f"o: also significant after Holm's step-down correction over the ordered pairs "
              f"{scope} (family-wise level {alpha})",
              "letters: " + ", ".join(f"{LETTERS[m]} = {m.upper()}" for m in METHODS)]
    return "\n".join(lines)


# -- Figure 2: which method wins, as a decision tree ----------------------------------------------
def best_methods(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, dataset, arch) with its design features and best method."""
    idx = df.groupby(["setting", "dataset", "arch"], sort=False)["acc"].idxmax()
    best = df.loc[idx, ["setting", "dataset", "arch", "method"]].reset_index(drop=True)
    best["train_size"] = [DATASETS[d][0] for d in best["dataset"]]
    best["classes"] = [DATASETS[d][1] for d in best["dataset"]]
    best["augmentation"] = [SETTINGS[s][0] for s in best["setting"]]
    best["dropout"] = [SETTINGS[s][1] for s in best["setting"]]
    return best


def decision_tree(df: pd.DataFrame, max_depth: int = 4, min_leaf: int = 7, seed: int = 0):
    """The paper's tree (Sec. 3.2): features -> best method; returns (tree, feature names)."""
    from sklearn.tree import DecisionTreeClassifier

    best = best_methods(df)
    x = pd.concat([best[["train_size", "classes", "augmentation", "dropout"]],
                   pd.get_dummies(best["arch"], prefix="arch", dtype=float)], axis=1)
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=min_leaf, random_state=seed)
    return tree.fit(x.to_numpy(dtype=float), best["method"]), list(x.columns)


def node_labels(tree, names: List[str]) -> List[str]:
    """Per node of a fitted tree: its split as a condition (true: left), or, at a leaf, the best
    method and how many cells each method won there."""
    t, labels = tree.tree_, []
    for i in range(t.node_count):
        counts = dict(zip(tree.classes_, t.value[i][0] * t.n_node_samples[i]))
        won = sorted(((-int(round(n)), m) for m, n in counts.items() if round(n)))
        tally = ", ".join(f"{m.upper()} {-n}" for n, m in won)
        if t.children_left[i] == -1:  # the tree's prediction: the majority, ties to the first
            labels.append(f"best: {tree.classes_[np.argmax(t.value[i][0])].upper()}\n({tally})")
            continue
        name, cut = names[t.feature[i]], t.threshold[i]
        cond = f"arch \u2260 {name[5:]}" if name.startswith("arch_") else f"{name} \u2264 {cut:g}"
        labels.append(f"{cond}?\n{t.n_node_samples[i]} cells: {tally}")
    return labels


def plot_tree(df: pd.DataFrame, out, source: str = "the paper's Table 2") -> Path:
    """Figure 2: the decision tree, each leaf naming the methods that won its cells."""
    from sklearn.tree import plot_tree as sk_plot

    tree, names = decision_tree(df)
    fig, ax = plt.subplots(figsize=(16, 8))
    labels = node_labels(tree, names)
    for text in sk_plot(tree, feature_names=names, filled=True, ax=ax, impurity=False,
                        node_ids=True, label="none", fontsize=8):
        node = text.get_text().split("#")[1].split()[0] if "#" in text.get_text() else None
        if node is not None:
            text.set_text(labels[int(node)])
    ax.set_title(f"{PAPER}, Fig. 2: the best method per cell of {source}; "
                 f"left branch: condition true", fontsize=10)
    return save(fig, out)


# -- Figures 3-7 and the ablations ----------------------------------------------------------------
