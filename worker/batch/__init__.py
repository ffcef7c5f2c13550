"""The batch lane (issue 28): prompts that can wait go through the providers' batch APIs.

`intake` writes each batch-lane prompt to Postgres before its input offset is committed;
`runner` (on one replica at a time) groups the stored requests into provider jobs, submits
them, polls them, and delivers each answer as a completion; `answers` builds those records.
"""
