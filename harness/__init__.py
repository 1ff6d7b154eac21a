"""routecheck: mirror a prompt corpus through LLM routes, trace, score, report, gate."""

__version__ = "0.1.0"
