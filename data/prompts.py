"""The prompts file of ``python train.py predict``.

A prompts file (``--data.predict_prompts FILE``) is either
- ``.txt``: one prompt per line (a prompt with line breaks needs ``.jsonl``); every line must hold a prompt, or
- ``.jsonl``: one JSON object per line with the prompt in the field ``--data.prompt_field`` (default ``prompt``);
  blank lines are skipped.
Errors name the file, the line and what is expected. The completions are written by
``models.generation.write_predictions``.
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPT_SUFFIXES = (".txt", ".jsonl")


def read_prompts(path: str | Path | None, field: str = "prompt") -> list[str]:
    """The prompts of ``path`` (``data.predict_prompts``), in file order; ValueError/FileNotFoundError naming the
    setting, the file and the line for a missing file, another format, an empty file, an empty prompt or a record
    without the text field."""
    if path is None:
        raise ValueError("data.predict_prompts is not set: predict needs a prompts file (--data.predict_prompts FILE, "
                         f"{' or '.join(PROMPT_SUFFIXES)}: one prompt per line, or one JSON record per line with the "
                         "prompt in data.prompt_field)")
    path = Path(path)
    if path.suffix not in PROMPT_SUFFIXES:
        raise ValueError(f"data.predict_prompts={str(path)!r}: a prompts file must end in "
                         f"{' or '.join(PROMPT_SUFFIXES)} (one prompt per line, or one JSON record per line)")
    if not path.is_file():
        raise FileNotFoundError(f"data.predict_prompts={str(path)!r}: "
                                + ("no such file" if not path.exists() else "not a file"))
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"data.predict_prompts={str(path)!r} is not UTF-8 text (byte {err.start})") from err
    prompts = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}, line {number}"
        if path.suffix == ".txt":
            if not line.strip():
                raise ValueError(f"{where} is empty: every line of a .txt prompts file is one prompt; remove empty "
                                 "lines (a prompt with line breaks needs a .jsonl file)")
            prompts.append(line)
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where} has no field data.prompt_field={field!r} (found: {keys})")
        prompt = record[field]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: field {field!r} must be a non-empty string, got {prompt!r}")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"data.predict_prompts={str(path)!r} holds no prompts")
    return prompts
