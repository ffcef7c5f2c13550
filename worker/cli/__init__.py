"""What a person runs: the `llm-worker` command line, the dev stack, `send`, the registry
commands and the fake provider server. Nothing in the service imports this package."""

from .main import main

__all__ = ["main"]
