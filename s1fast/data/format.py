"""The exact training text of the s1, s1.1 and Sky-T1 recipes, and its token ids and loss mask.

s1 / s1.1: the Qwen2.5 chat template with its default system prompt, the question as the user turn, and the
assistant turn ``<|im_start|>think\\n{trace}\\n<|im_start|>answer\\n{answer}``. chat: the same ChatML
template over the row's turns (ShareGPT or ``messages`` rows). Only assistant turns are trained: from the
token after ``<|im_start|>assistant\\n`` up to and including that turn's ``<|im_end|>`` and the ``\\n`` after
it, found by token id after one tokenisation. sky-t1: the same rows through LLaMA-Factory's ``qwen25``
template as Sky-T1 was trained (SkyThought's fork): each assistant turn ends with ``<|endoftext|>`` (no
``<|im_end|>``), later user turns follow a ``\\n``, and the pieces are tokenised one by one, the assistant
text and its ``<|endoftext|>`` trained (``sky_t1_pieces``). The full templates, the trace and answer fields
of each dataset, and the masks: docs/recipe.md, "The training text".
"""
from __future__ import annotations

from dataclasses import dataclass

from .readers import DataError

IM_START, IM_END, ASSISTANT, NEWLINE = 151644, 151645, 77091, 198
SKY_T1_EOS = "<|endoftext|>"  # LLaMA-Factory's qwen25 template replaces the EOS with it (stop_words[0])
IGNORE = -100
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
RECIPES = ("s1", "s1.1", "sky-t1", "chat")
S1_BODY = "<|im_start|>think\n{trace}\n<|im_start|>answer\n{answer}"
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    special_in_text: int = 0  # special-token strings found inside the data's own text

    @property
    def supervised(self) -> int:
        """Tokens the model is trained to predict: labels[1:] (the first token has no prediction before it)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


def _fitting_recipe(row: dict) -> str | None:
    """The recipe whose fields ``row`` has, for a hint when the chosen one's are missing."""
    for recipe, field in (("s1.1", "deepseek_thinking_trajectory"), ("s1", "thinking_trajectories"),
                          ("sky-t1", "conversations"), ("chat", "messages")):
        if field in row:
            return recipe
    return None


def _text(row: dict, field: str, where: dict, *, allow_list: bool = False) -> str:
    if field not in row:
        fits = _fitting_recipe(row)
        hint = f"; the row has the fields of --recipe {fits}" if fits else \
            ("; it is a question with no reasoning trace: make traces first (python -m s1fast.data generate)"
             if any(k in row for k in ("question", "problem", "prompt")) else "")
        raise DataError(f"missing (have: {', '.join(sorted(row)) or 'no fields'}){hint}", field=field, **where)
    if row[field] is None:
        raise DataError("is null: give it a string, or remove the row", field=field, **where)
    v = row[field]
    if allow_list and isinstance(v, (list, tuple)):
        if not all(isinstance(x, str) for x in v):
            raise DataError("must be a list of strings", field=field, **where)
        v = "\n".join(v)
    if not isinstance(v, str):
        raise DataError(f"must be a string, got {type(v).__name__}", field=field, **where)
    return v


def _answer(attempt: str) -> str:
    """s1's data/tokenization.py: prefix "Answer: " to the attempt as it is, then strip the whole (an attempt
    that starts with spaces or newlines keeps them after the prefix; an empty one gives "Answer:")."""
    return ("Answer: " + attempt if "Answer:" not in attempt else attempt).strip()


def to_messages(row: dict, recipe: str, *, path: str | None = None, row_id: int | None = None) -> list[dict]:
    """The chat turns of one training example for ``recipe`` (system turn first)."""
    where = {"path": path, "row": row_id}
    if recipe not in RECIPES:
        raise DataError(f"unknown recipe '{recipe}'; choose one of {', '.join(RECIPES)}")
    if recipe in ("s1", "s1.1"):
        question = _text(row, "question", where)
        if recipe == "s1":
            trace = _text(row, "thinking_trajectories", where, allow_list=True).strip()
            attempt = _text(row, "attempt", where)
            trace_field = "thinking_trajectories"
        else:
            trace = _text(row, "deepseek_thinking_trajectory", where).strip()
            attempt = _text(row, "deepseek_attempt", where)
            trace_field = "deepseek_thinking_trajectory"
        if not trace:
            raise DataError("empty reasoning trace", field=trace_field, **where)
        if not question.strip():
            raise DataError("empty question", field="question", **where)
        body = S1_BODY.format(trace=trace, answer=_answer(attempt))
        return [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": question},
                {"role": "assistant", "content": body}]
    # sky-t1 / chat
    if "conversations" in row:
        turns = row["conversations"]
        if not isinstance(turns, list) or not turns:
            raise DataError("must be a non-empty list of {from, value}", field="conversations", **where)
        msgs = []
        for j, t in enumerate(turns):
            if not isinstance(t, dict) or "from" not in t or "value" not in t:
                raise DataError(f"turn {j} must be an object with 'from' and 'value'", field="conversations", **where)
            role = _SHAREGPT_ROLES.get(t["from"])
            if role is None or not isinstance(t["value"], str):
                raise DataError(f"turn {j}: unknown speaker '{t['from']}' or non-string value",
                                field="conversations", **where)
            msgs.append({"role": role, "content": t["value"]})
        system = row.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError("must be a string", field="system", **where)
    elif "messages" in row:
        turns = row["messages"]
        if not isinstance(turns, list) or not turns:
            raise DataError("must be a non-empty list of {role, content}", field="messages", **where)
        msgs = []
        for j, t in enumerate(turns):
            if not isinstance(t, dict) or t.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(t.get("content"), str):
                raise DataError(f"turn {j} must have role system/user/assistant and string content",
                                field="messages", **where)
            msgs.append({"role": t["role"], "content": t["content"]})
        system = None
    else:
        fits = _fitting_recipe(row)
        raise DataError(f"recipe '{recipe}' needs 'conversations' (ShareGPT) or 'messages' (chat); "
                        f"row has {', '.join(sorted(row))}"
                        + (f"; it has the fields of --recipe {fits}" if fits else ""),
                        **where)
    field = "conversations" if "conversations" in row else "messages"
    check_turn_order(msgs, field, where)
    if msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system if system else DEFAULT_SYSTEM})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        raise DataError("no non-empty assistant turn to train on", field=field, **where)
    return msgs


def check_turn_order(msgs: list[dict], field: str, where: dict) -> None:
    """A conversation is an optional system turn, then user and assistant turns alternating, user first and
    assistant last; anything else (assistant first, two user turns in a row, a late system turn) is refused."""
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    for j, m in enumerate(body):
        turn = j + (len(msgs) - len(body)) + 1
        if m["role"] == "system":
            raise DataError(f"turn {turn} is a system turn after the conversation began; a system turn may only "
                            f"come first", field=field, **where)
        want = "user" if j % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DataError(f"turn {turn} is {m['role']} where {want} was expected: turns must alternate user, "
                            f"assistant, user, ... starting with user", field=field, **where)
    if body and body[-1]["role"] != "assistant":
        raise DataError(f"the last turn ({len(msgs)}) is a user turn with no answer to train on; end with an "
                        f"assistant turn", field=field, **where)


def chatml(messages: list[dict]) -> str:
    """Qwen2.5's chat template for plain text turns (no tools), with no generation prompt."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def generation_prompt(question: str | list[dict], system: str | None = DEFAULT_SYSTEM) -> str:
    """The chat prompt up to ``<|im_start|>assistant\n`` for a question or a list of chat turns (no system
    turn when ``system`` is empty or None; a leading system turn in the list replaces ``system``)."""
    turns = [{"role": "user", "content": question}] if isinstance(question, str) else list(question)
    if turns and turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    turns = ([{"role": "system", "content": system}] if system else []) + turns
    return chatml(turns) + "<|im_start|>assistant\n"


def render(example: dict, recipe: str, tokenizer=None, *, path: str | None = None,
           row_id: int | None = None) -> str:
    """The exact training string of ``example`` under ``recipe``.

    With a tokenizer that has a chat template, the template renders it (the tests check it equals the
    built-in ChatML renderer byte for byte on real rows); without one, the built-in renderer does. sky-t1
    is LLaMA-Factory's qwen25 template whatever the tokenizer's (``sky_t1_pieces``).
    """
    return _render(to_messages(example, recipe, path=path, row_id=row_id), tokenizer, recipe)


def _render(msgs: list[dict], tokenizer, recipe: str = "chat") -> str:
    if recipe == "sky-t1":
        return "".join(text for text, _ in sky_t1_pieces(msgs))
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    return chatml(msgs)


def sky_t1_pieces(msgs: list[dict]) -> list[tuple[str, bool]]:
    """Sky-T1's training text as (text, trained) pieces, each tokenised on its own as LLaMA-Factory does.

    SkyThought's LLaMA-Factory fork (commit 0751518, the Sky-T1-32B-Preview release), template ``qwen25``:
    system ``<|im_start|>system\\n{system}<|im_end|>\\n``, user ``<|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n`` (after the first pair preceded by the separator ``\\n``), assistant ``{content}``
    then the EOS token, which ``replace_eos`` makes ``<|endoftext|>``. Prompts are masked; each response and
    its EOS are trained (supervised.py, train_on_prompt false).
    """
    pieces = [(f"<|im_start|>system\n{msgs[0]['content']}<|im_end|>\n", False)]
    for i, m in enumerate(msgs[1:]):
        if m["role"] == "user":
            user = f"<|im_start|>user\n{m['content']}<|im_end|>\n<|im_start|>assistant\n"
            pieces.append((("\n" if i else "") + user, False))
        else:
            pieces += [(m["content"], True), (SKY_T1_EOS, True)]
    return pieces


def label_mask(ids: list[int]) -> list[int]:
    """Labels for ``ids``: the token where it lies inside an assistant turn's trained span, else -100.

    A turn's span starts after ``<|im_start|>assistant`` and the token that carries its newline
    (``\\n`` alone, or a merged newline token when the content starts with newlines), and ends with
    the turn's ``<|im_end|>`` and the ``\\n`` after it.
    """
    labels = [IGNORE] * len(ids)
    i, n = 0, len(ids)
    while i < n - 1:
        if ids[i] == IM_START and ids[i + 1] == ASSISTANT:
            j = i + 3  # skip <|im_start|>, assistant, and the header newline token
            while j < n and ids[j] != IM_END:
                labels[j] = ids[j]
                j += 1
            if j < n:
                labels[j] = ids[j]  # <|im_end|>
                if j + 1 < n and ids[j + 1] == NEWLINE:
                    labels[j + 1] = ids[j + 1]
                    j += 1
            i = j + 1
        else:
            i += 1
    return labels


def encode(example: dict, tokenizer, recipe: str, max_tokens: int | None = None, *, policy: str = "error",
           path: str | None = None, row_id: int | None = None) -> Encoded:
    """Token ids and labels of one example (tokenised once, boundaries found by id).

    ``policy`` decides what happens when the example is longer than ``max_tokens``: ``"error"``
    raises a DataError naming the row, ``"truncate"`` keeps the first ``max_tokens`` tokens (sky-t1:
    LLaMA-Factory's cut, ``llamafactory_cutoff``; marked ``truncated``), ``"drop"`` is handled by the caller
    (``encode`` returns the full example).
    """
    msgs = to_messages(example, recipe, path=path, row_id=row_id)
    text = _render(msgs, tokenizer, recipe)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:   # valid JSON ("\ud83d"), but no tokenizer takes it
        raise DataError(f"the text holds a lone surrogate (\\u{ord(text[e.start]):04x} in the JSON), which cannot be "
                        f"tokenised: fix or remove the row", path=path, row=row_id) from None
    specials = special_strings(tokenizer)
    found = sum(m["content"].count(s) for m in msgs for s in specials)
    if recipe in ("s1", "s1.1"):  # the s1 body's own think / answer markers are the template's, not the data's
        found -= sum(S1_BODY.count(s) for s in specials)
    if recipe == "sky-t1":
        pairs = _sky_t1_pairs(msgs, tokenizer)
        ids, labels = llamafactory_cutoff(pairs, None)
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = label_mask(ids)
    truncated = False
    if max_tokens is not None and len(ids) > max_tokens:
        if policy == "error":
            raise DataError(f"{len(ids)} tokens, over the {max_tokens}-token budget: raise --max-tokens or use "
                            f"--policy drop / truncate", path=path, row=row_id)
        if policy == "truncate":
            ids, labels = llamafactory_cutoff(pairs, max_tokens) if recipe == "sky-t1" else \
                (ids[:max_tokens], labels[:max_tokens])
            truncated = True
    return Encoded(ids, labels, truncated, found)


def _sky_t1_pairs(msgs: list[dict], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of each turn pair, every piece of ``sky_t1_pieces`` tokenised on its own."""
    pairs: list[tuple[list[int], list[int]]] = []
    for piece, trained in sky_t1_pieces(msgs):
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        if not trained and (not pairs or pairs[-1][1]):
            pairs.append(([], []))
        pairs[-1][1 if trained else 0].extend(piece_ids)
    return pairs


def llamafactory_cutoff(pairs: list[tuple[list[int], list[int]]], cutoff: int | None) -> tuple[list[int], list[int]]:
    """Ids and labels of the turn pairs within ``cutoff`` tokens (None: all), cut as LLaMA-Factory cuts Sky-T1's
    (supervised.py ``_encode_supervised_example``, processor_utils.py ``infer_seqlen``): pair by pair, a
    response under half the budget left keeps whole and the prompt's end goes; else a prompt under half keeps
    whole and the response's end goes; else both shrink in proportion. Prompts are masked, responses trained."""
    ids, labels, total = [], [], 0
    for src, tgt in pairs:
        if cutoff is None:
            ids, labels = ids + src + tgt, labels + [IGNORE] * len(src) + tgt
            continue
        if total >= cutoff:
            break
        budget = cutoff - total
        if len(tgt) * 2 < budget:
            max_tgt = budget
        elif len(src) * 2 < budget:
            max_tgt = budget - len(src)
        else:
            max_tgt = int(budget * (len(tgt) / (len(src) + len(tgt))))
        n_tgt = min(max_tgt, len(tgt))
        n_src = min(max(budget - n_tgt, 0), len(src))
        ids += src[:n_src] + tgt[:n_tgt]
        labels += [IGNORE] * n_src + tgt[:n_tgt]
        total += n_src + n_tgt
    return ids, labels


_SPECIALS: dict[int, tuple[str, ...]] = {}


def special_strings(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special tokens as text: in data text they would tokenise as real special tokens."""
    key = id(tokenizer)
    if key not in _SPECIALS:
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        _SPECIALS[key] = tuple(sorted({t.content for t in added.values() if getattr(t, "special", False)}
                                      | set(getattr(tokenizer, "all_special_tokens", []) or [])))
    return _SPECIALS[key]
