#!/usr/bin/env python3
"""Chat-template vectors for runtime/model/chat_template (tests/unit/test_chat_template.c).

Renders a fixed set of conversations through each template of tests/data/chat_templates/
(templates.json names each file, its source, and the tokens the model's tokenizer_config.json
gives) and writes tests/data/chat_templates/vectors.json: for every (template, conversation,
add_generation_prompt) the exact text, or the template's own error (raise_exception). It also
renders the small templates of snippets.json (Jinja's semantics one feature at a time: scoping,
whitespace control, filters, methods, tests, operators) over SNIPPET_VARIABLES, each to its text
or to "error" (the engine must then fail too, with its own words).

The renderer is transformers' apply_chat_template(tokenize=False) when transformers is importable
(the GPU machine's Python); otherwise jinja2 configured as transformers configures it in
chat_template_utils._compile_jinja_template: ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks and the loopcontrols extension, its tojson (json.dumps, ensure_ascii False, keys in
order) and raise_exception. The output records which renderer made it ("renderer").

    python3 tests/vectors/make_chat_template_vectors.py [--jinja2]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "chat_templates")

# The date the Llama 3 templates print when date_string is given (instead of today's).
EXTRA = {"date_string": "26 Jul 2024"}

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city, in \u00b0C.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name"}},
            "required": ["city"],
        },
    },
}]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
    "no_system_multi": [
        {"role": "user", "content": "  Hi there \n"},
        {"role": "assistant", "content": " Hello! How can I help? "},
        {"role": "user", "content": "Tell me a story about a dragon\nin two lines."},
    ],
    "unicode": [
        {"role": "user", "content": "Caf\u00e9 \u2615, na\u00efve \u65e5\u672c\u8a9e \U0001f600 \"quotes\" \\ back"},
    ],
    "reasoning": [
        {"role": "user", "content": "What is 6 * 7?"},
        {"role": "assistant", "content": "<think>6 * 7 = 42</think>It is 42."},
        {"role": "user", "content": "And 6 * 8?"},
    ],
    "assistant_last": [
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "Yes."},
    ],
    "tool": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call12345", "type": "function",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 21}"},
    ],
}

SNIPPET_VARIABLES = {
    "m": [{"role": "user", "content": " Hi \n", "n": 2},
          {"role": "assistant", "content": "Yo", "x": None, "n": 1}],
    "s": "h\u00e9llo w\u00f6rld  ", "n": 3, "f": 2.5,
    "d": {"b": 1, "a": [1, 2.0, "x"], "c": {"z": None}}, "e": [], "t": True,
    "u": "a\tb\\c\"d'e\u0001",
    "bos_token": "<s>", "eos_token": "</s>",
}

# The tool conversation only for templates that carry the tool role (others raise or drop it).
TOOL_TEMPLATES = {"qwen2.5-7b-instruct", "llama-3.2-3b-instruct", "mistral-nemo-instruct-2407",
                  "deepseek-r1-distill-llama-8b", "hermes-3-llama-3.1-70b-tool_use", "qwen3-0.6b"}


def jinja2_renderer():
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception

    def render_snippet(source, variables):
        try:
            return {"text": env.from_string(source).render(**variables)}
        except Exception as e:  # an UndefinedError, TypeError... as much as a TemplateError
            return {"error": type(e).__name__ + ": " + str(e)}

    def render(source, tokens, messages, add_generation_prompt, tools):
        kw = dict(tokens)
        kw.update(EXTRA)
        if tools is not None:
            kw["tools"] = tools
        try:
            return {"text": env.from_string(source).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **kw)}
        except jinja2.exceptions.TemplateError as e:
            return {"error": str(e)}
    return "jinja2 " + jinja2.__version__ + " (transformers' settings)", render, render_snippet


def transformers_renderer():
    import jinja2
    import transformers
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from transformers.utils.chat_template_utils import _compile_jinja_template

    def render_snippet(source, variables):
        try:
            return {"text": _compile_jinja_template(source).render(**variables)}
        except Exception as e:
            return {"error": type(e).__name__ + ": " + str(e)}

    def render(source, tokens, messages, add_generation_prompt, tools):
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), **tokens)
        try:
            return {"text": tok.apply_chat_template(
                messages, chat_template=source, tools=tools, tokenize=False,
                add_generation_prompt=add_generation_prompt, **EXTRA)}
        except jinja2.exceptions.TemplateError as e:
            return {"error": str(e)}
    return ("transformers " + transformers.__version__ + " apply_chat_template", render,
            render_snippet)


def main():
    name, render, render_snippet = None, None, None
    if "--jinja2" not in sys.argv:
        try:
            name, render, render_snippet = transformers_renderer()
        except ImportError:
            pass
    if render is None:
        name, render, render_snippet = jinja2_renderer()
    with open(os.path.join(DATA, "templates.json")) as f:
        templates = json.load(f)
    vectors = []
    for t in templates:
        with open(os.path.join(DATA, t["file"]), encoding="utf-8") as f:
            source = f.read()
        tokens = {k: v for k, v in t["tokens"].items() if v is not None}
        for conv, messages in CONVERSATIONS.items():
            if conv == "tool" and t["name"] not in TOOL_TEMPLATES:
                continue
            for agp in (True, False):
                tools = TOOLS if conv == "tool" else None
                v = {"template": t["name"], "conversation": conv, "add_generation_prompt": agp}
                v.update(render(source, tokens, messages, agp, tools))
                vectors.append(v)
    with open(os.path.join(DATA, "snippets.json"), encoding="utf-8") as f:
        snippets = [dict(src=src, **render_snippet(src, SNIPPET_VARIABLES)) for src in json.load(f)]
    out = {
        "renderer": name,
        "extra_variables": EXTRA,
        "tools": TOOLS,
        "conversations": CONVERSATIONS,
        "vectors": vectors,
        "snippet_variables": SNIPPET_VARIABLES,
        "snippets": snippets,
    }
    with open(os.path.join(DATA, "vectors.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(vectors)} vectors and {len(snippets)} snippets by {name}")


if __name__ == "__main__":
    main()
