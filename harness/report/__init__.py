"""The report stage: per-cohort comparison of candidate routes with the baseline.

    load.py      read the run from the store (once) into frames
    stats.py     paired statistics (bootstrap, McNemar, Wilcoxon, Holm, power)
    compare.py   paired results -> Comparisons with verdicts (pure, no I/O)
    discover.py  exploratory cohorts (clusters, worst slices)
    build.py     the Report of a run: load, compare, discover
    render/      outputs (terminal, Markdown, JSON, JUnit, HTML)
"""
