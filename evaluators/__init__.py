"""Evaluators score each response; see evaluators/base.py for the protocol."""
