"""The score stage: every evaluator over a run's responses -> the `scores` table.

Evaluators themselves are plug-ins in the top-level `evaluators` package; this stage reads the
store, runs them in batches and writes their results.
"""

from harness.score.run import ScoreSummary, load_records, score_run

__all__ = ["ScoreSummary", "load_records", "score_run"]
