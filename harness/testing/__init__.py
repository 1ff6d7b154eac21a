"""Test helpers that build small artefacts (checkpoints, tokenizers) locally, without downloads."""
