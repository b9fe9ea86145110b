"""A reasoning model's reply split into its thinking and its answer, by the markers the models write.

One home for the markers: ``<think>...</think>`` (DeepSeek-R1 and its distills; a lone ``</think>`` when the
chat template opened the block), Sky-T1's ``<|begin_of_thought|> ... <|end_of_thought|>`` with the answer in
``<|begin_of_solution|> ... <|end_of_solution|>``, and s1's ``think`` / ``answer`` sections. A block that never
closed (cut by the token limit) is all thinking, with no answer.
"""
from __future__ import annotations

import re

_SKY = re.compile(r"\s*(?:<\|begin_of_thought\|>)?(.*?)<\|end_of_thought\|>(.*)", re.S)
_SKY_SOLUTION = re.compile(r"\s*<\|begin_of_solution\|>(.*?)(?:<\|end_of_solution\|>|$)", re.S)


def split_content(content: str) -> tuple[str, str, str]:
    """(thinking, answer, which markers split them) of a reply's text; ("", text, "none") with no markers."""
    m = _SKY.match(content) if "<|end_of_thought|>" in content else None
    if m:
        sol = _SKY_SOLUTION.match(m.group(2))
        return m.group(1).strip(), (sol.group(1) if sol else m.group(2)).strip(), "sky_t1"
    m = re.match(r"\s*<\|begin_of_thought\|>(.*)", content, re.S)
    if m:                       # Sky-T1's block never closed: no answer
        return m.group(1).strip(), "", "sky_t1_unclosed"
    m = re.search(r"<think>(.*?)</think>(.*)", content, re.S)
    if m:
        return m.group(1).strip(), m.group(2).strip(), "think_tags"
    if "</think>" in content:   # the chat template opened the block (DeepSeek-R1 distills' prompt ends in <think>)
        thinking, _, answer = content.partition("</think>")
        return thinking.strip(), answer.strip(), "think_close"
    m = re.match(r"\s*<think>(.*)", content, re.S)
    if m:                       # the block never closed (cut by the token limit): no answer
        return m.group(1).strip(), "", "think_unclosed"
    m = re.search(r"(?:<\|im_start\|>)?think\n(.*?)(?:<\|im_start\|>)answer\n?(.*)", content, re.S)
    if m:
        return m.group(1).strip(), m.group(2).strip(), "s1_sections"
    return "", content.strip(), "none"
