"""The generateContent wire format as the `gemini` adapter writes and reads it.

Sources (Google's Gemini API reference and guides, ai.google.dev):
  * api/generate-content: `GenerationConfig.responseJsonSchema` takes JSON Schema, "only the
    following properties are supported: $id, $defs, $ref, $anchor, type, format, title,
    description, enum, items, prefixItems, minItems, maxItems, minimum, maximum, anyOf, oneOf
    (interpreted as anyOf), properties, additionalProperties, required" and the non-standard
    `propertyOrdering`. `FunctionDeclaration.parametersJsonSchema` is the same JSON Schema
    alternative to the OpenAPI-subset `parameters`, so both get the same keyword check. Any
    other keyword (pattern, minLength, const, allOf, patternProperties...) would be ignored,
    that is its constraint silently dropped: the adapter refuses it instead. Annotations that
    constrain nothing (`$schema`, `$comment`, `default`, `examples`...) are left out of the
    body rather than refused.
  * docs/function-calling: `tools[].functionDeclarations[]`, `toolConfig.functionCallingConfig`
    (mode AUTO | ANY | NONE, `allowedFunctionNames` with ANY); the model's `functionCall`
    parts {name, args}, answered by `functionResponse` parts {name, response} in a user turn.
  * docs/thought-signatures: a replayed `functionCall` part without the signature the model
    gave it is refused by Gemini 3 models; history we did not keep a signature for carries the
    documented sentinel `skip_thought_signature_validator` on each step's first call.
  * docs/file-input-methods: inline `inlineData` {mimeType, data (base64)}, and public https
    URLs as `fileData` {fileUri, mimeType} that Google fetches itself.
  * docs/thinking: `thinkingConfig.thinkingBudget` (Gemini 2.5; Gemini 3 still takes it, where
    its own `thinkingLevel` would be refused by 2.5 models and "medium" by 3 Pro); the budgets
    for low/medium/high are those Google's OpenAI-compatible endpoint uses for
    `reasoning_effort`: 1024, 8192, 24576.
  * `UsageMetadata`: `promptTokenCount` includes `cachedContentTokenCount`; `totalTokenCount`
    is the sum of prompt, candidates, toolUsePrompt and thoughts, so `candidatesTokenCount`
    does not include the thoughts: output tokens are candidates + thoughts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from yarl import URL

from .base import ImagePart, Message, TextPart, Tool, ToolChoice

__all__ = [
    "GenerateBody",
    "GenerateResponse",
    "GenerationConfig",
    "answer_finish",
    "build_contents",
    "clean_schema",
    "decode_response",
    "image_problem",
    "schema_problem",
    "thinking_for",
    "tool_config_for",
    "tools_for",
]

SCHEMA_KEYWORDS = frozenset(
    {
        "$id",
        "$defs",
        "$ref",
        "$anchor",
        "type",
        "format",
        "title",
        "description",
        "enum",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "anyOf",
        "oneOf",
        "properties",
        "additionalProperties",
        "required",
        "propertyOrdering",
    }
)
ANNOTATIONS = frozenset(
    {"$schema", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
_SCHEMA_MAPS = ("properties", "$defs")  # name → subschema
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")  # [subschema, ...]
_SCHEMA_ONE = ("items", "additionalProperties")  # a subschema (or a boolean)

SKIP_SIGNATURE = "skip_thought_signature_validator"
THINKING_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
_BLOCKED = frozenset(
    {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}
)
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".gif": "image/gif",
}

_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


# -- the request ------------------------------------------------------------------------------


class Blob(msgspec.Struct, rename="camel"):
    mime_type: str
    data: str  # base64


class FileData(msgspec.Struct, rename="camel", omit_defaults=True):
    file_uri: str
    mime_type: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    args: dict[str, Any]


class FunctionResponse(msgspec.Struct):
    name: str
    response: dict[str, Any]


class Part(msgspec.Struct, rename="camel", omit_defaults=True):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought_signature: str | None = None


class Content(msgspec.Struct, omit_defaults=True):
    parts: tuple[Part, ...]
    role: str | None = None


class ThinkingConfig(msgspec.Struct, rename="camel"):
    thinking_budget: int


class GenerationConfig(msgspec.Struct, rename="camel", omit_defaults=True):
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] | None = None
    seed: int | None = None
    response_mime_type: str | None = None
    response_json_schema: dict[str, Any] | None = None
    thinking_config: ThinkingConfig | None = None


class FunctionDeclaration(msgspec.Struct, rename="camel", omit_defaults=True):
    name: str
    description: str | None = None
    parameters_json_schema: dict[str, Any] | None = None


class ToolGroup(msgspec.Struct, rename="camel"):
    function_declarations: tuple[FunctionDeclaration, ...]


class FunctionCallingConfig(msgspec.Struct, rename="camel", omit_defaults=True):
    mode: str
    allowed_function_names: tuple[str, ...] | None = None


class ToolConfig(msgspec.Struct, rename="camel"):
    function_calling_config: FunctionCallingConfig


class GenerateBody(msgspec.Struct, rename="camel", omit_defaults=True):
    contents: tuple[Content, ...]
    system_instruction: Content | None = None
    generation_config: GenerationConfig | None = None
    tools: tuple[ToolGroup, ...] | None = None
    tool_config: ToolConfig | None = None


def _subschemas(key: str, value: Any) -> Iterable[Any]:
    if key in _SCHEMA_MAPS:
        return value.values() if isinstance(value, dict) else ()
    if key in _SCHEMA_LISTS:
        return value if isinstance(value, list) else ()
    if key in _SCHEMA_ONE:
        return value if isinstance(value, list) else (value,)
    return ()


def schema_problem(schema: Any) -> str | None:
    """The first keyword in `schema` (walked through every subschema) that Gemini does not
    take, or None. Property and `$defs` names are names, not keywords."""
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in SCHEMA_KEYWORDS:
            return str(key)
        for sub in _subschemas(key, value):
            found = schema_problem(sub)
            if found is not None:
                return found
    return None


def clean_schema(schema: Any) -> Any:
    """`schema` without the annotations (`ANNOTATIONS`) Gemini would not take."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: clean_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [clean_schema(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            value = (
                [clean_schema(s) for s in value]
                if isinstance(value, list)
                else (clean_schema(value))
            )
        out[key] = value
    return out


def image_problem(url: str) -> str | None:
    """Why Gemini cannot take this image URL (a phrase), or None."""
    if url.startswith("data:"):
        header = url[5:].partition(",")[0]
        if not header.endswith(";base64") or not header.partition(";")[0]:
            return "with a `data:` URL that is not `data:<mime type>;base64,`"
        return None
    if url.startswith("https://"):
        return None
    return f"with a `{url.partition(':')[0]}:` URL (only https: and data: are)"


def image_part(url: str) -> Part:
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        return Part(inline_data=Blob(header.partition(";")[0], data))
    try:
        path = URL(url).path.lower()
    except ValueError:
        path = ""
    suffix = path[path.rfind(".") :] if "." in path else ""
    return Part(file_data=FileData(url, _IMAGE_TYPES.get(suffix)))


def _user_parts(message: Message) -> list[Part]:
    content = message.content
    if content is None or isinstance(content, str):
        return [Part(text=message.text)] if message.text else []
    parts: list[Part] = []
    for piece in content:
        if isinstance(piece, TextPart) and piece.text:
            parts.append(Part(text=piece.text))
        elif isinstance(piece, ImagePart):
            parts.append(image_part(piece.image_url.url))
    return parts


def _model_parts(message: Message) -> list[Part]:
    parts = [Part(text=message.text)] if message.text else []
    for n, call in enumerate(message.tool_calls or ()):
        signature = SKIP_SIGNATURE if n == 0 else None
        parts.append(
            Part(function_call=FunctionCall(call.name, call.arguments), thought_signature=signature)
        )
    return parts


def _tool_response(text: str) -> dict[str, Any]:
    """A tool turn's text as `functionResponse.response`: a JSON object as is, else wrapped."""
    try:
        doc = _decode_any(text)
    except (msgspec.DecodeError, RecursionError):
        doc = None
    return doc if isinstance(doc, dict) else {"result": text}


def build_contents(messages: Iterable[Message]) -> tuple[Content | None, list[Content]]:
    """`systemInstruction` and `contents` for the conversation. Raises LookupError for a tool
    turn whose `tool_call_id` no earlier assistant turn made (Gemini names the function)."""
    system: list[Part] = []
    turns: list[tuple[str, list[Part]]] = []
    names: dict[str, str] = {}
    merging = False  # the last turn holds function responses: the next tool turn joins it
    for message in messages:
        role = message.role
        if role == "system":
            if message.text:
                system.append(Part(text=message.text))
            continue
        if role == "tool":
            call_id = message.tool_call_id or ""
            name = names.get(call_id)
            if name is None:
                raise LookupError(
                    f"the tool turn answers tool_call_id {call_id!r}, "
                    "which no earlier assistant turn made"
                )
            part = Part(function_response=FunctionResponse(name, _tool_response(message.text)))
            if merging:
                turns[-1][1].append(part)
            else:
                turns.append(("user", [part]))
            merging = True
            continue
        merging = False
        if role == "assistant":
            for call in message.tool_calls or ():
                names[call.id] = call.name
            turns.append(("model", _model_parts(message)))
        else:
            turns.append(("user", _user_parts(message)))
    # Gemini refuses an empty text part and a turn without parts: empty turns are left out
    contents = [Content(tuple(parts), role) for role, parts in turns if parts]
    return (Content(tuple(system)) if system else None), contents


def tools_for(tools: tuple[Tool, ...] | None) -> tuple[ToolGroup, ...] | None:
    if not tools:
        return None
    declarations = tuple(
        FunctionDeclaration(t.name, t.description, clean_schema(t.parameters) or None)
        for t in tools
    )
    return (ToolGroup(declarations),)


def tool_config_for(choice: ToolChoice | None) -> ToolConfig | None:
    if choice is None:
        return None
    names = (choice.name,) if choice.mode == "function" and choice.name else None
    return ToolConfig(FunctionCallingConfig(_MODES[choice.mode], names))


def thinking_for(effort: str | None) -> ThinkingConfig | None:
    return ThinkingConfig(THINKING_BUDGETS[effort]) if effort is not None else None


# -- the answer -------------------------------------------------------------------------------


class AnswerCall(msgspec.Struct):
    name: str
    args: Any = None
    id: str | None = None

    @property
    def arguments(self) -> dict[str, Any]:
        return self.args if isinstance(self.args, dict) else {}

    @property
    def unparsed(self) -> str | None:
        """The arguments as sent when they are no JSON object (absent ones are `{}`)."""
        if self.args is None or isinstance(self.args, dict):
            return None
        return _encode(self.args).decode()


class AnswerPart(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False
    function_call: AnswerCall | None = None


class AnswerContent(msgspec.Struct):
    parts: list[AnswerPart] = []


class Candidate(msgspec.Struct, rename="camel"):
    content: AnswerContent | None = None
    finish_reason: str | None = None


class UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    cached_content_token_count: int = 0
    thoughts_token_count: int = 0
    tool_use_prompt_token_count: int = 0

    @property
    def input_tokens(self) -> int:
        return self.prompt_token_count + self.tool_use_prompt_token_count

    @property
    def output_tokens(self) -> int:
        return self.candidates_token_count + self.thoughts_token_count


class PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class GenerateResponse(msgspec.Struct, rename="camel"):
    candidates: list[Candidate] = []
    usage_metadata: UsageMetadata | None = None
    prompt_feedback: PromptFeedback | None = None
    response_id: str | None = None
    model_version: Any = None  # informational: never fail an answer over it


decode_response = msgspec.json.Decoder(GenerateResponse).decode


def answer_finish(reason: str | None, called: bool) -> str | None:
    """The normalised finish reason: a STOP that called a function is "tool_calls"."""
    if reason is None:
        return None
    if reason in _BLOCKED:
        return "content_filter"
    if reason == "STOP" and called:
        return "tool_calls"
    return _FINISH.get(reason, reason.lower())
