from evaluators import groundedness  # noqa: F401
