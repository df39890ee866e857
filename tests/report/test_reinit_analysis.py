"""Table 3 (binomial test + Holm) and Figure 2 (decision tree) on the paper's own Table 2."""
import numpy as np
import pandas as pd
import pytest

from runner.analysis.reinit_stats import (best_methods, decision_tree, format_table2, holm,
                                          paper_table2, sign_test, table3)


def test_paper_table2_is_complete():
    df = paper_table2()
    assert len(df) == 3 * 6 * 4 * 6
    assert df.groupby(["setting", "dataset", "arch"]).size().eq(6).all()
    row = df[(df.setting == "aug") & (df.dataset == "cassava") & (df.arch == "mobilenet")]
    assert row.set_index("method")["acc"].to_dict() == {
        "bl": 62.3, "welsr": 72.8, "dsd": 80.1, "wels": 76.1, "fc": 77.3, "lw": 81.1}


def test_sign_test_by_hand():
    # 16 wins, 1 loss, 1 tie (dropped): P(X >= 16 | n=17, 1/2) = (1 + 17) / 2^17
    row, col = np.r_[np.zeros(17), 1.0], np.r_[np.ones(16), -1.0, 1.0]
    assert sign_test(row, col) == pytest.approx(18 / 2 ** 17)
    assert sign_test(col, row) > 0.99


def test_holm_step_down():
    # thresholds 0.05/4, 0.05/3, 0.05/2, 0.05: the third-smallest (0.03) fails, so does the rest
    assert holm([0.01, 0.04, 0.012, 0.03]) == [True, False, True, False]
    assert holm([0.001, 0.2]) == [True, False]


def test_table3_lw_beats_bl_as_in_the_paper():
    t = table3(paper_table2()).set_index(["arch", "row", "col"])
    # Table 3: "Only LW performs better than the baseline across all architectures" ...
    for arch in ("scnn", "vgg16", "mobilenet", "resnet50"):
        assert t.loc[(arch, "bl", "lw"), "mark"] in ("*", "o")
    assert t.loc[("scnn", "bl", "lw"), "mark"] == "o" and t.loc[("vgg16", "bl", "lw"), "mark"] == "o"
    assert t.loc[("scnn", "bl", "lw"), "p"] == pytest.approx(18 / 2 ** 17)
    # ... "For resnet50, reinitialization methods except FC perform better than the baseline"
    for m in ("welsr", "dsd", "wels"):
        assert t.loc[("resnet50", "bl", m), "mark"] != ""
    assert t.loc[("resnet50", "bl", "fc"), "mark"] == ""
    # ... and no other method beats the baseline in every architecture
    for m in ("welsr", "dsd", "wels", "fc"):
        assert any(t.loc[(a, "bl", m), "mark"] == "" for a in ("scnn", "vgg16", "mobilenet", "resnet50"))


def test_decision_tree_has_the_papers_shape_and_favours_lw():
    df = paper_table2()
    best = best_methods(df)
    assert len(best) == 72
    tree, names = decision_tree(df)
    assert tree.get_depth() <= 4 and tree.tree_.n_node_samples[tree.tree_.children_left == -1].min() >= 7
    assert "arch_vgg16" in names
    # "LW performs best overall except in vgg16, where FC performs better" (Figure 2)
    assert best["method"].value_counts().idxmax() == "lw"
    assert best[best.arch == "vgg16"]["method"].value_counts().idxmax() == "fc"


def test_format_table2_puts_the_paper_beside_ours():
    ours = pd.DataFrame([{"setting": "none", "dataset": "cassava", "arch": "scnn", "method": "lw",
                          "acc": 60.0, "std": 1.0}])
    text = format_table2(ours)
    assert "60.0 ± 1.0 (63.9)" in text
