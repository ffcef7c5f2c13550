"""The batch clients of the providers that have one, and the `Target` a job goes to."""

from __future__ import annotations

from llm_worker.adapters import get_adapter
from llm_worker.adapters.base import ProviderRequest, Target
from llm_worker.adapters.batch import BatchClient
from llm_worker.adapters.batch_clients import BATCH_PROVIDERS, batch_client_for
from llm_worker.adapters.secrets import SecretStore
from llm_worker.registry.models import ModelRow
from llm_worker.registry.resolve import Candidate

__all__ = ["BatchClients"]


class BatchClients:
    def __init__(self, secrets: SecretStore) -> None:
        self._secrets = secrets
        self._clients: dict[str, BatchClient] = {}

    def client(self, provider: str) -> BatchClient | None:
        client = self._clients.get(provider)
        if client is None:
            made = batch_client_for(provider)
            if made is None:
                return None
            client = self._clients[provider] = made
        return client

    def use(self, provider: str, client: BatchClient) -> None:
        """`provider`'s jobs go through `client` (one with other limits, say)."""
        self._clients[provider] = client

    def refuse(self, candidate: Candidate, request: ProviderRequest) -> str | None:
        """Why the request cannot go to `candidate`'s batch API, or None."""
        if candidate.provider not in BATCH_PROVIDERS:
            return (
                f"provider {candidate.provider!r} of row {candidate.row.model_id!r} has no"
                f" batch API (the batch lane takes {', '.join(sorted(BATCH_PROVIDERS))})"
            )
        target = self.target(
            candidate.provider, candidate.endpoint, candidate.upstream_model, candidate.row
        )
        return get_adapter(candidate.provider).unsupported(target, request)

    def target(
        self, provider: str, endpoint: str, model: str, row: ModelRow, *, secret: bool = False
    ) -> Target:
        """Where a job goes; `secret`: with the row's API key (MissingSecret if absent)."""
        key = self._secrets.get(row.api_key_secret) if secret and row.api_key_secret else None
        return Target(
            provider=provider,
            endpoint=endpoint
            or get_adapter(provider).endpoint_for(
                Target(provider=provider, endpoint="", model=model, endpoint_name="")
            ),
            model=model,
            endpoint_name=f"{row.model_id}/batch",
            api_key=key,
            timeout_ms=row.timeout_ms,
            max_tokens=row.max_tokens,
            dialect=row.dialect,
            structured_outputs=row.structured_outputs,
        )

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
