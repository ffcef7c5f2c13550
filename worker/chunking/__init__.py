"""Streaming: a provider stream's pieces become chunk records, shared by every identical request.

    ChunkSource    one provider stream: pieces batched into chunks (a linger), kept for the
                   requests that follow it, ended by a final chunk (`source.py`)
    Multiplexer    the sources in flight, by dedup key: a request identical to one being
                   streamed joins its source instead of calling (`source.py`)
    ChunkWriter    one request's chunk sequence: each chunk of its source produced under the
                   request's `id` and key, in order, each after the last was acknowledged
                   (`writer.py`)

The chunk contract is `worker.chunks`; the pipeline wires these around the call.
"""

from .source import ChunkSource, Multiplexer
from .writer import ChunkWriter, Publish

__all__ = ["ChunkSource", "ChunkWriter", "Multiplexer", "Publish"]
