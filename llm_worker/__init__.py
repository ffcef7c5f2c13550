"""llm-worker, installed under its own name.

The repository keeps one folder per wing (`worker/`, `adapters/`, `registry/`, `migrations/`,
`devkit/`); this package maps them as `llm_worker.worker`, `llm_worker.adapters`, ... (each
entry here is a link to its folder), so a checkout, an editable install and the wheel import the
same names, and nothing is installed under a generic top-level name. The wheel holds the service
alone: `llm_worker.devkit` (the dev stack, fake provider, broker tooling and benchmarks) runs
from a checkout (docs/development.md).
"""
