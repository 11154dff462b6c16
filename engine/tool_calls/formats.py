"""How each chat-template family writes a tool call, and how to read it back.

Each format names the markers its template writes (found in the template text), parses a
reply into (content, calls) and gives what constrained decoding needs to force a call: a
fixed opening, then the call's JSON, or one markup sequence per tool that may be called
(the name sits in the markup: Harmony, DeepSeek, Kimi-K2; GLM's and MiniMax's XML). The markup is copied from the templates llama.cpp keeps in models/templates/
(Qwen3, Hermes 3, gpt-oss, DeepSeek V3.1 and R1, GLM-4.6, Llama 3.1, MiniMax-M2, Kimi-K2)
and from llama.cpp's own parsers (common/chat.cpp).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from converters.core.errors import ItamaeError
from engine.types import ToolCall


def _arguments(text: str) -> str:
    """Arguments as compact JSON text; a JSON string holding JSON (DeepSeek R1's template
    writes `arguments | tojson` of a string) is unwrapped."""
    value = json.loads(text)
    if isinstance(value, str):
        value = json.loads(value)
    return json.dumps(value, ensure_ascii=False)


def _scan_json(text: str, start: int) -> tuple[str, int] | None:
    """The JSON value starting at or after `start` and the index after it."""
    at = len(text) - len(text[start:].lstrip())
    try:
        _, end = json.JSONDecoder().raw_decode(text, at)
    except json.JSONDecodeError:
        return None
    return text[at:end], end


@dataclass(frozen=True)
class Forced:
    """A call made certain by constrained decoding: `prefix` opens it, then JSON of
    `schema`, or one of `sequences` (engine.types.OutputConstraint says the parts)."""

    prefix: str
    schema: dict = field(default_factory=dict)
    sequences: list = field(default_factory=list)


class ToolFormat:
    """A family's call markup. parse() gives the reply's content as the text before the
    first call (reasoning left in, as in replies without tools: the surfaces split
    `<think>` blocks themselves) and the calls."""

    name = ""
    markers: tuple[str, ...] = ()  # strings in the template that identify the family
    starts: tuple[str, ...] = ()  # what begins a call in a reply

    def detect(self, template: str) -> bool:
        return all(m in template for m in self.markers)

    def parse(self, text: str, tools: list[dict]) -> tuple[str, list[ToolCall]]:
        raise NotImplementedError

    def forced(self, tools: list[dict], name: str | None) -> Forced | None:
        """The constraint that forces a call (of `name`, or of any tool); None when this
        family's calls cannot be forced."""
        return None

    def content_before_calls(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.starts) if i >= 0), default=len(text))
        return text[:cut].strip()


def _parameters(tool: dict) -> dict:
    """The arguments' schema; an object without an additionalProperties rule is closed,
    as OpenAI's strict mode does, so a forced call cannot wander into invented keys."""
    schema = dict(tool.get("function", {}).get("parameters") or {"type": "object"})
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def _name_and_arguments(tools: list[dict], name: str | None, arguments_key: str) -> dict:
    """{"name": const, <arguments_key>: the tool's schema}, one alternative per tool."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                arguments_key: _parameters(t),
            },
            "required": ["name", arguments_key],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


class Hermes(ToolFormat):
    """Qwen2.5/Qwen3/Hermes: <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>.
    Also the format Itamae gives models whose template knows no tools."""

    name = "hermes"
    markers = ("<tool_call>",)
    starts = ("<tool_call>",)

    def parse(self, text, tools):
        calls = []
        for match in re.finditer(r"<tool_call>\s*", text):
            found = _scan_json(text, match.end())
            if found is None:
                continue
            call = json.loads(found[0])
            if isinstance(call, dict) and "name" in call:
                args = call.get("arguments", call.get("parameters", {}))
                calls.append(ToolCall(call["name"], _arguments(json.dumps(args))))
        return (self.content_before_calls(text) if calls else text.strip()), calls

    def forced(self, tools, name):
        return Forced("<tool_call>\n", _name_and_arguments(tools, name, "arguments"))


class Llama3(ToolFormat):
    """Llama 3.1-3.3: the reply is {"name": ..., "parameters": {...}} (optionally after
    <|python_tag|>), ended by <|eom_id|> or <|eot_id|>."""

    name = "llama3"
    markers = ('"parameters": ', "<|start_header_id|>")
    starts = ("<|python_tag|>", '{"name"')

    def parse(self, text, tools):
        body = text.replace("<|python_tag|>", "").strip()
        if not body.startswith("{"):
            return text.strip(), []
        found = _scan_json(body, 0)
        call = json.loads(found[0]) if found else None
        if not (isinstance(call, dict) and "name" in call):
            return text.strip(), []
        args = call.get("parameters", call.get("arguments", {}))
        return "", [ToolCall(call["name"], _arguments(json.dumps(args)))]

    def forced(self, tools, name):
        return Forced("", _name_and_arguments(tools, name, "parameters"))


def _chosen(tools: list[dict], name: str | None) -> list[dict]:
    return [t for t in tools if name is None or t["function"]["name"] == name]


def _per_tool(prefix: str, tools: list[dict], name: str | None, parts) -> Forced:
    """A call whose name sits in the markup: after the shared `prefix`, one sequence per
    tool that may be called, `parts(tool)` long."""
    return Forced(prefix, sequences=[parts(t) for t in _chosen(tools, name)])


class Harmony(ToolFormat):
    """gpt-oss: <|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json
    <|message|>{...}<|call|> (the template writes `to=` before the channel; both orders are
    read, as llama.cpp's parser does). analysis-channel text is reasoning, not content."""

    name = "harmony"
    markers = ("<|channel|>", "<|call|>")
    starts = ("to=functions.",)
    _call = re.compile(
        r"to=functions\.([\w.\-]+)[^<]*(?:<\|channel\|>[^<]*)?(?:<\|constrain\|>\w*)?<\|message\|>"
    )

    def parse(self, text, tools):
        calls = []
        for match in self._call.finditer(text):
            found = _scan_json(text, match.end())
            if found is not None:
                calls.append(ToolCall(match.group(1), _arguments(found[0])))
        final = re.search(
            r"<\|channel\|>final<\|message\|>(.*?)(?:<\|end\|>|<\|return\|>|$)", text, re.S
        )
        content = final.group(1).strip() if final else ""
        if not calls and not final:
            content = re.sub(r"<\|[a-z]+\|>", "", text).strip()
        return content, calls

    def forced(self, tools, name):
        return _per_tool(
            "<|channel|>commentary to=functions.",
            tools,
            name,
            lambda t: [
                ("text", t["function"]["name"] + " "),
                ("token", "<|constrain|>"),
                ("text", "json"),
                ("token", "<|message|>"),
                ("json", _parameters(t)),
            ],
        )


class DeepSeek(ToolFormat):
    """DeepSeek V3/R1: <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```
    <｜tool▁call▁end｜>; V3.1 drops the type and the fence: <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}."""

    name = "deepseek"
    markers = ("<｜tool▁calls▁begin｜>",)
    starts = ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>")
    _call = re.compile(
        r"<｜tool▁call▁begin｜>(?:(\w+)<｜tool▁sep｜>([^\n<]+)\n```json\n|([^<]+?)<｜tool▁sep｜>)"
    )

    def parse(self, text, tools):
        calls = []
        for match in self._call.finditer(text):
            name = (match.group(2) or match.group(3) or "").strip()
            found = _scan_json(text, match.end())
            if found is not None:
                calls.append(ToolCall(name, _arguments(found[0])))
        return (self.content_before_calls(text) if calls else text.strip()), calls

    def forced(self, tools, name):
        return _per_tool(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>",
            tools,
            name,
            lambda t: [("text", t["function"]["name"] + "\n```json\n"), ("json", _parameters(t))],
        )


class KimiK2(ToolFormat):
    """Kimi-K2: <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX
    <|tool_call_argument_begin|>{...}<|tool_call_end|><|tool_calls_section_end|>."""

    name = "kimi"
    markers = ("<|tool_calls_section_begin|>",)
    starts = ("<|tool_calls_section_begin|>",)
    _call = re.compile(
        r"<\|tool_call_begin\|>\s*(?:functions\.)?([\w.\-]+?)(?::(\d+))?\s*<\|tool_call_argument_begin\|>"
    )

    def parse(self, text, tools):
        calls = []
        for match in self._call.finditer(text):
            found = _scan_json(text, match.end())
            if found is not None:
                ident = f"functions.{match.group(1)}:{match.group(2) or len(calls)}"
                calls.append(ToolCall(match.group(1), _arguments(found[0]), ident))
        return (self.content_before_calls(text) if calls else text.strip()), calls

    def forced(self, tools, name):
        return _per_tool(
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.",
            tools,
            name,
            lambda t: [
                ("text", t["function"]["name"] + ":0"),
                ("token", "<|tool_call_argument_begin|>"),
                ("json", _parameters(t)),
            ],
        )


def _xml_value(raw: str, name: str, tool: dict | None):
    """An XML-written argument: JSON where it reads as JSON, unless the tool's schema says
    the parameter is a string (GLM and MiniMax write strings bare, other values as JSON)."""
    properties = (tool or {}).get("function", {}).get("parameters", {}).get("properties", {})
    if properties.get(name, {}).get("type") == "string":
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


_BARE_STRING_KEYS = {"type", "description", "title", "maxLength"}


def _xml_value_part(key: str, spec: dict) -> tuple[str, object]:
    """A string is written bare (up to its maxLength, or one of its enum values), anything
    else as JSON of its schema; a string limit bare text cannot keep is refused."""
    if spec.get("type") != "string":
        return ("json", spec)
    if set(spec) <= _BARE_STRING_KEYS:
        return ("raw", spec.get("maxLength"))
    if set(spec) <= _BARE_STRING_KEYS | {"enum"} and all(
        isinstance(v, str) and "<" not in v for v in spec["enum"]
    ):
        return ("oneof", list(spec["enum"]))
    extra = sorted(set(spec) - _BARE_STRING_KEYS)
    raise ItamaeError(
        f"A forced call cannot hold the string argument {key!r} to {extra} in this "
        "model's XML tool-call format.",
        "Use tool_choice 'auto', or drop that limit from the tool's parameters.",
    )


def _xml_arguments(tool: dict, opening, closing) -> list:
    """The parts of a tool's required arguments written as XML: `opening(key)` and
    `closing` around each value. Optional arguments are left out of a forced call."""
    schema = _parameters(tool)
    parts = []
    for key in schema.get("required", []):
        spec = schema.get("properties", {}).get(key, {})
        parts += [*opening(key), _xml_value_part(key, spec), *closing]
    return parts


def _tool_named(tools: list[dict], name: str) -> dict | None:
    return next((t for t in tools if t.get("function", {}).get("name") == name), None)


class Glm45(ToolFormat):
    """GLM-4.5/4.6: <tool_call>NAME\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>...</tool_call>."""

    name = "glm45"
    markers = ("<arg_key>", "<tool_call>")
    starts = ("<tool_call>",)
    _pair = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)

    def parse(self, text, tools):
        calls = []
        for match in re.finditer(r"<tool_call>\s*([^\n<]+)(.*?)(?:</tool_call>|$)", text, re.S):
            name, tool = match.group(1).strip(), _tool_named(tools, match.group(1).strip())
            args = {
                k.strip(): _xml_value(v, k.strip(), tool)
                for k, v in self._pair.findall(match.group(2))
            }
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        return (self.content_before_calls(text) if calls else text.strip()), calls

    def forced(self, tools, name):
        def parts(tool):
            opening = lambda key: [  # noqa: E731
                ("token", "<arg_key>"),
                ("text", key),
                ("token", "</arg_key>"),
                ("text", "\n"),
                ("token", "<arg_value>"),
            ]
            closing = [("token", "</arg_value>"), ("text", "\n")]
            head = [("text", tool["function"]["name"] + "\n")]
            return head + _xml_arguments(tool, opening, closing) + [("token", "</tool_call>")]

        return _per_tool("<tool_call>", tools, name, parts)


class MiniMaxM2(ToolFormat):
    """MiniMax-M2: <minimax:tool_call>\\n<invoke name="NAME"><parameter name="k">v</parameter>
    ...</invoke>\\n</minimax:tool_call>."""

    name = "minimax"
    markers = ("<minimax:tool_call>",)
    starts = ("<minimax:tool_call>",)
    _param = re.compile(r'<parameter name="([^"]+)">(.*?)</parameter>', re.S)

    def parse(self, text, tools):
        calls = []
        for match in re.finditer(r'<invoke name="([^"]+)">(.*?)</invoke>', text, re.S):
            name, tool = match.group(1), _tool_named(tools, match.group(1))
            args = {k: _xml_value(v, k, tool) for k, v in self._param.findall(match.group(2))}
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        return (self.content_before_calls(text) if calls else text.strip()), calls

    def forced(self, tools, name):
        def parts(tool):
            opening = lambda key: [("text", f'<parameter name="{key}">')]  # noqa: E731
            closing = [("text", "</parameter>\n")]
            head = [("text", f'<invoke name="{tool["function"]["name"]}">\n')]
            tail = [("text", "</invoke>\n"), ("token", "</minimax:tool_call>")]
            return head + _xml_arguments(tool, opening, closing) + tail

        return _per_tool("<minimax:tool_call>\n", tools, name, parts)
