#!/usr/bin/env python3
"""Renders the chat templates of model/tests/chat-templates with `transformers`, for the Rust
test that compares our rendering (minijinja) to it exactly (model/tests/chat_template.rs).

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install transformers jinja2
    /tmp/venv/bin/python scripts/chat_templates.py

Writes model/tests/chat-templates/expected.json: for every template, conversation, prefix of
the conversation (its first n messages, n = 0..len) and add_generation_prompt, the text
`transformers`' own renderer (`render_jinja_template`, the function behind
`apply_chat_template`: a sandboxed Jinja2 with trim_blocks, lstrip_blocks, loop controls,
`raise_exception`, `strftime_now` and its `tojson`) makes, or that it raised. No torch needed.
`strftime_now` reads a fixed date, 2025-02-03, so that the file does not change by the day.

Also, for every assistant message, the assistant turn as the prefix renderings give it: what
the messages through it (no generation prompt) add to the messages before it (with the
generation prompt), the way trainers find what to train on.
"""

import datetime as real_datetime
import json
import pathlib

import jinja2
import transformers
from transformers.utils import chat_template_utils
from transformers.utils.chat_template_utils import render_jinja_template

HERE = pathlib.Path(__file__).resolve().parent.parent / "model" / "tests" / "chat-templates"
FIXED_DATE = real_datetime.datetime(2025, 2, 3, 0, 0, 0)


class FixedDatetime(real_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_DATE


def render(template, messages, add_generation_prompt):
    """The rendering, or None when the template raised."""
    try:
        return render_jinja_template(
            conversations=[messages],
            chat_template=template["source"],
            add_generation_prompt=add_generation_prompt,
            bos_token=template["bos_token"],
            eos_token=template["eos_token"],
        )[0][0]
    except Exception:  # raise_exception, an undefined value used, ...: "it raised"
        return None


def main():
    chat_template_utils.datetime = FixedDatetime  # strftime_now's clock
    meta = json.loads((HERE / "templates.json").read_text())
    conversations = json.loads((HERE / "conversations.json").read_text())
    out = {
        "generated_by": f"scripts/chat_templates.py, transformers {transformers.__version__}, "
        f"jinja2 {jinja2.__version__}",
        "date": FIXED_DATE.date().isoformat(),
        "renderings": [],
        "assistant_turns": [],
    }
    for name, template in meta["templates"].items():
        template = dict(template, source=(HERE / f"{name}.jinja").read_text())
        for conversation in conversations:
            messages = conversation["messages"]
            for n in range(len(messages) + 1):
                for add_generation_prompt in (False, True):
                    text = render(template, messages[:n], add_generation_prompt)
                    out["renderings"].append(
                        {
                            "template": name,
                            "conversation": conversation["name"],
                            "messages": n,
                            "add_generation_prompt": add_generation_prompt,
                            "text": text,
                        }
                    )
            turns = []
            for i, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                before = render(template, messages[:i], True)
                through = render(template, messages[: i + 1], False)
                if before is None or through is None or not through.startswith(before):
                    turns = None
                    break
                turns.append(through[len(before):])
            out["assistant_turns"].append(
                {"template": name, "conversation": conversation["name"], "turns": turns}
            )
    path = HERE / "expected.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(out['renderings'])} renderings")


if __name__ == "__main__":
    main()
