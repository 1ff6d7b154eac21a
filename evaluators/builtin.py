"""Importing this module registers the built-in evaluators."""

from evaluators import groundedness, llm_judge, task_completion, tool_selection  # noqa: F401
