"""llm-worker: a Kafka stream-processing worker for LLM completions."""

from .config import ConfigError, Settings, load_settings
from .messages import Completion, ErrorInfo, Prompt, Usage

__all__ = ["Completion", "ConfigError", "ErrorInfo", "Prompt", "Settings", "Usage", "load_settings"]
__version__ = "0.1.0"
