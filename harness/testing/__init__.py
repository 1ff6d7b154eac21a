"""Test and benchmark support shipped with routecheck: the OpenAI-compatible stub server, synthetic stores."""
