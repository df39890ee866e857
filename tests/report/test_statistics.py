"""Table 3's multiple-testing correction on inputs where Holm's step-down and Bonferroni differ,
and Figure 2's decision tree leaf by leaf on the paper's own Table 2."""
import numpy as np
import pandas as pd
import pytest

from runner.analysis.reinit_stats import decision_tree, holm, paper_table2, sign_test, table3


def bonferroni(pvalues, alpha=0.05):
    return [p <= alpha / len(pvalues) for p in pvalues]


@pytest.mark.parametrize("pvalues,expected", [
    ([0.01, 0.04], [True, True]),  # 0.04 <= 0.05 / 1 after the first; Bonferroni: 0.04 > 0.025
    ([0.04, 0.01], [True, True]),  # order of the input does not matter
    ([0.025, 0.05], [True, True]),  # a p-value equal to its threshold is rejected
    ([0.012, 0.015, 0.02, 0.03], [True, True, True, True]),  # thresholds 0.0125, 1/60, 0.025, 0.05
    ([0.01, 0.03, 0.04], [True, False, False]),  # step-down stops at 0.03 > 0.025 (step-up
    # procedures such as Hochberg's would go on and reject 0.04 <= 0.05)
    ([0.5, 0.001, 0.2], [False, True, False]),
    ([], []),
])
def test_holm_by_hand(pvalues, expected):
    assert holm(pvalues) == expected


def test_these_inputs_tell_holm_from_bonferroni():
    assert holm([0.01, 0.04]) != bonferroni([0.01, 0.04])
    assert holm([0.012, 0.015, 0.02, 0.03]) != bonferroni([0.012, 0.015, 0.02, 0.03])


def test_holm_at_another_level():
    assert holm([0.01, 0.04], alpha=0.02) == [True, False]
    assert holm([0.005, 0.009], alpha=0.02) == [True, True]  # 0.009 <= 0.02 / 1


def test_table3_marks_what_only_holm_rejects():
    """19 matched experiments of one architecture: LW beats FC and BL in all; FC beats BL in 15 and
    loses 4 (p = 5036 / 2^19 = 0.0096). Six ordered pairs: Holm's thresholds 0.05/6, 0.05/5,
    0.05/4 reject the third-smallest p too; Bonferroni (0.05/6 = 0.0083) would not."""
    rows = []
    for i in range(19):
        fc = 0.0 if i < 4 else 2.0
        for method, acc in (("bl", 1.0), ("fc", fc), ("lw", 3.0)):
            rows.append({"setting": "none", "dataset": f"d{i}", "arch": "scnn", "method": method,
                         "acc": acc})
    t = table3(pd.DataFrame(rows)).set_index(["row", "col"])
    assert len(t) == 6
    assert t.loc[("bl", "fc"), "p"] == pytest.approx(5036 / 2 ** 19)
    assert t.loc[("bl", "lw"), "p"] == pytest.approx(2 ** -19) == t.loc[("fc", "lw"), "p"]
    assert t.loc[("bl", "fc"), "mark"] == "o"  # Bonferroni: '*' only
    assert t.loc[("bl", "lw"), "mark"] == "o" and t.loc[("fc", "lw"), "mark"] == "o"
    assert (t.loc[[("fc", "bl"), ("lw", "bl"), ("lw", "fc")], "mark"] == "").all()
    t_strict = table3(pd.DataFrame(rows), alpha=0.01).set_index(["row", "col"])
    assert t_strict.loc[("bl", "fc"), "mark"] == "*"  # 0.0096 < 0.01 but > 0.01 / 4


def test_table3_corrects_within_each_architecture_or_over_all():
    df = paper_table2()
    by_arch, over_all = table3(df), table3(df, family="all")
    for arch, g in by_arch.groupby("arch"):
        assert g["holm"].tolist() == holm(g["p"].tolist())
    assert over_all["holm"].tolist() == holm(over_all["p"].tolist())
    assert over_all["holm"].sum() < by_arch["holm"].sum()  # 120 tests correct harder than 30


def test_sign_test_is_one_sided_and_drops_ties():
    row = np.zeros(10)
    col = np.r_[np.ones(7), -np.ones(2), 0.0]  # 7 wins, 2 losses, 1 tie: P(X >= 7 | 9, 1/2)
    assert sign_test(row, col) == pytest.approx((36 + 9 + 1) / 512)
    assert sign_test(col, row) == pytest.approx(1 - (9 + 1) / 512)  # P(X >= 2 | 9)
    assert sign_test(row, row) == 1.0


def leaves(tree, names):
    """Each leaf as (path of conditions, predicted method, number of samples)."""
    t, out = tree.tree_, []

    def walk(node, path):
        if t.children_left[node] == -1:
            out.append((tuple(path), tree.classes_[t.value[node][0].argmax()],
                        int(t.n_node_samples[node])))
            return
        name, thr = names[t.feature[node]], t.threshold[node]
        walk(t.children_left[node], path + [f"{name} <= {thr:g}"])
        walk(t.children_right[node], path + [f"{name} > {thr:g}"])

    walk(0, [])
    return out


def test_decision_tree_leaves_on_the_papers_table2():
    tree, names = decision_tree(paper_table2())
    got = leaves(tree, names)
    assert got == [
        (("arch_vgg16 <= 0.5", "arch_resnet50 <= 0.5", "train_size <= 3370"), "lw", 12),
        (("arch_vgg16 <= 0.5", "arch_resnet50 <= 0.5", "train_size > 3370", "arch_scnn <= 0.5"),
         "lw", 12),
        (("arch_vgg16 <= 0.5", "arch_resnet50 <= 0.5", "train_size > 3370", "arch_scnn > 0.5"),
         "lw", 12),
        (("arch_vgg16 <= 0.5", "arch_resnet50 > 0.5", "classes <= 110.5"), "dsd", 9),
        (("arch_vgg16 <= 0.5", "arch_resnet50 > 0.5", "classes > 110.5"), "lw", 9),
        (("arch_vgg16 > 0.5", "train_size <= 4668"), "fc", 9),
        (("arch_vgg16 > 0.5", "train_size > 4668"), "fc", 9),
    ]
    # Figure 2's reading: LW best except in vgg16, where FC is; every leaf holds >= 7 cells
    assert {m for path, m, _ in got if "arch_vgg16 > 0.5" in path} == {"fc"}
    assert sum(n for *_, n in got) == 72 and min(n for *_, n in got) >= 7
