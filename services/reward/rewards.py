"""Reward functions, registered by name.

Invariants this module keeps:

- A reward is a pure function ``fn(completion: str, sample: Sample) -> float``: no I/O, nothing global
  written, the same inputs give the same output, and no ``str`` completion makes it raise. A malformed
  ``Sample`` (for example an answer letter beyond its options) does raise ``ValueError``: that is a data
  bug to fix, not a model output to score.
- The value is in [0, 1], or ``float("nan")`` for "unscorable" (the learner leaves such a sample out of
  its group's statistics). ``format``, ``answer_format`` and ``mcq`` always score.
- Work is bounded on huge completions. Every scan is either a C-level ``str`` method over the whole text
  (linear, no backtracking) or a regular expression over at most ``TAIL_CHARS`` characters, so a 1 MB
  completion costs about what a 4 KiB one does. Families that need a longer window (tracking boxes, scene
  graphs) state its size in their module and keep their patterns linear.
- The reward families live in their own modules (``numeric``, ``temporal``, ``bbox``, ``graph``), which
  register on import; importing this module imports them (see its last line), so ``REGISTRY`` is complete.

Completions follow ``<think>…</think><answer>…</answer>`` unless a task says otherwise; ``answer_format``
is the rule for tasks (and small models) that answer without thinking.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# The final answer sits at the end of a completion by convention; reading only its last 4 KiB keeps the
# regex work constant however long the model rambles, and a letter buried deeper than that is not an answer.
TAIL_CHARS = 4096


@dataclass(frozen=True)
class Sample:
    """What a reward knows about the question a completion answers.

    ``options`` are the bare option texts in letter order (A, B, …); a leading label such as ``"B. "`` on
    an option is tolerated. ``extra`` holds task-specific targets (``num_options`` when the texts are unknown).
    """

    task: str
    answer: str
    options: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


RewardFn = Callable[[str, Sample], float]

_REGISTRY: dict[str, RewardFn] = {}
REGISTRY: Mapping[str, RewardFn] = MappingProxyType(_REGISTRY)


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a reward under ``name``; a second registration of the same name is a bug and raises.

    >>> @register("always_one")
    ... def always_one(completion: str, sample: Sample) -> float:
    ...     return 1.0
    >>> get("always_one")("anything", Sample(task="t", answer=""))
    1.0
    >>> del _REGISTRY["always_one"]  # keep the doctest from leaking into the registry
    """

    def decorate(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorate


def get(name: str) -> RewardFn:
    """The reward registered as ``name``; ``KeyError`` names the known ones.

    >>> get("mcq").__name__
    'mcq_reward'
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(_REGISTRY))}") from None


# ---------------------------------------------------------------------------------------------- format


@register("format")
def format_reward(completion: str, sample: Sample) -> float:
    """1.0 if the completion is exactly ``<think>…</think>`` then ``<answer>…</answer>``, else 0.0.

    Whitespace is allowed around and between the two blocks, nothing else. Each of the four tags must occur
    exactly once, so nested or repeated tags score 0 (Video-R1's ``<think>.*?</think>\\s*<answer>.*?</answer>``
    fullmatch lets ``…</answer><answer>…</answer>`` through; this does not). Tags are case-sensitive; block
    contents may be empty. The check uses ``str.count``/``str.find`` only, so it reads the whole text in
    linear time.

    >>> s = Sample(task="mcq", answer="B")
    >>> format_reward("<think>the cup moves left</think>\\n<answer>B</answer>\\n", s)
    1.0
    >>> format_reward("<think>x</think><answer>B</answer> done", s)
    0.0
    >>> format_reward("<answer>B</answer>", s)
    0.0
    """
    text = completion.strip()
    if any(text.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return 0.0
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return 0.0
    think_end = text.index(THINK_CLOSE) + len(THINK_CLOSE)
    answer_start = text.index(ANSWER_OPEN)
    return 1.0 if think_end <= answer_start and not text[think_end:answer_start].strip() else 0.0


@register("answer_format")
def answer_format_reward(completion: str, sample: Sample) -> float:
    """1.0 if the completion is exactly one ``<answer>…</answer>`` block (whitespace around allowed), else 0.0.

    For tasks whose prompt asks for the answer without thinking. Any think tag, a second answer tag or
    text outside the block scores 0.

    >>> s = Sample(task="mcq", answer="B")
    >>> answer_format_reward("  <answer>B</answer>\\n", s)
    1.0
    >>> answer_format_reward("<think>x</think><answer>B</answer>", s)
    0.0
    """
    text = completion.strip()
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return 0.0
    if THINK_OPEN in text or THINK_CLOSE in text:
        return 0.0
    return 1.0 if text.startswith(ANSWER_OPEN) and text.endswith(ANSWER_CLOSE) else 0.0


# ------------------------------------------------------------------------------------------------- mcq

# A marker is an option letter written as a label: "(B)", or "B" followed by ".", ")" or ":".
# Alone ("B", "b", "(b)", "B.") it is an answer in any case; lowercase is safe there because nothing else
# is in the text. Followed by text it needs the punctuation ("B) text"), so "A person moves" is no marker.
_LONE = re.compile(r"\(([A-Za-z])\)\.?|([A-Za-z])[.):]?")
_LABELLED = re.compile(r"(?:\(([A-Za-z])\)|([A-Za-z])[.):])\s+(?=\S)")
# "Option B" is a marker only as the whole text: inside prose ("option A says left, …") it is a mention.
_OPTION_ONLY = re.compile(r"option(?:\s*:\s*|\s+)(?:\(([A-Za-z])\)|([A-Za-z]))\.?", re.IGNORECASE)
# "Answer: B", "the answer is (B)", "Final answer: b." — the word must be whole, and ":" or "is" must follow,
# so "Direction: left" and "answers: …" never count.
_PHRASE = re.compile(r"\banswer\b\s*(?::|\bis\b)[\s:]*", re.IGNORECASE)
# A hedge right after a marker names a second option: "A. or B", "(A) and (C)", "A) / B)".
_HEDGE = re.compile(r"(?:or|and|/|,|&)\s*\(?([A-Z])\b")
_OPTION_LABEL = re.compile(r"\(?([A-Za-z])[.):]\s+")


def answer_region(completion: str, limit: int = TAIL_CHARS) -> tuple[str, bool]:
    """The raw text an answer is read from, and whether it was cut to its last ``limit`` characters.

    That is the content of the last ``<answer>`` tag (to the end of the text when unclosed, since stop
    strings usually swallow the ``</answer>``), else whatever follows the last ``</think>``, else everything.
    A cut text starts at a word boundary (its first, possibly partial, word is dropped).

    >>> answer_region("<think>3</think><answer> 4 m</answer>")
    (' 4 m', False)
    """
    start, end = 0, len(completion)
    open_at = completion.rfind(ANSWER_OPEN)
    if open_at >= 0:
        start = open_at + len(ANSWER_OPEN)
        close_at = completion.find(ANSWER_CLOSE, start)
        end = close_at if close_at >= 0 else end
    elif (think_at := completion.rfind(THINK_CLOSE)) >= 0:
        start = think_at + len(THINK_CLOSE)
    cut = end - start > limit
    text = completion[end - limit : end] if cut else completion[start:end]
    if cut:  # the first word may be a fragment ("…nswer: B" or a stray "B." from mid-sentence): drop it
        parts = text.split(None, 1)
        text = parts[1] if len(parts) == 2 else ""
    return text, cut


def _region(completion: str) -> tuple[str, bool]:
    """``answer_region`` normalised for reading an option letter."""
    text, cut = answer_region(completion)
    # NFKC maps full-width "（Ｂ）" to "(B)"; markdown emphasis ("**B**") never carries meaning here.
    text = unicodedata.normalize("NFKC", text).replace("*", "").replace("`", "")
    return text.strip(), cut


def _markers_at(text: str) -> list[str]:
    """Letters that ``text`` opens with: its marker, plus a second one if it hedges ("A. or B")."""
    lone = _LONE.fullmatch(text) or _OPTION_ONLY.fullmatch(text)
    if lone:
        return [(lone.group(1) or lone.group(2)).upper()]
    labelled = _LABELLED.match(text)
    if not labelled:
        return []
    letters = [(labelled.group(1) or labelled.group(2)).upper()]
    rest = text[labelled.end() :]
    second = _LONE.fullmatch(rest) or _LABELLED.match(rest) or _HEDGE.match(rest)
    if second:
        letters.append(next(g for g in second.groups() if g).upper())
    return letters


def _letters(text: str, cut: bool) -> set[str]:
    """Every option letter the answer text commits to (more than one means it hedged)."""
    letters = set() if cut else set(_markers_at(text))  # a cut text has lost its beginning
    for phrase in _PHRASE.finditer(text):
        letters.update(_markers_at(text[phrase.end() :].strip()))
    return letters


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).rstrip(".")


def _option_by_text(text: str, options: tuple[str, ...]) -> str | None:
    """The letter of the one option whose text equals ``text`` (its own label stripped), if exactly one."""
    wanted = _normalise(text)
    hits = []
    for i, option in enumerate(options):
        letter = chr(ord("A") + i)
        label = _OPTION_LABEL.match(option.strip())
        if label and label.group(1).upper() == letter:
            option = option.strip()[label.end() :]
        if wanted and _normalise(option) == wanted:
            hits.append(letter)
    return hits[0] if len(hits) == 1 else None


def _option_count(sample: Sample) -> int:
    count = len(sample.options) or int(sample.extra.get("num_options", 0))
    if not 1 <= count <= 26:
        raise ValueError(f"mcq sample needs 1..26 options (options or extra['num_options']), got {count}")
    return count


@register("mcq")
def mcq_reward(completion: str, sample: Sample) -> float:
    """1.0 if the completion picks the option ``sample.answer`` (a letter), else 0.0.

    The rule, applied to the last ``<answer>`` block's content (else the text after ``</think>``, else
    all of it), NFKC-normalised and with ``*`` and backticks removed:

    1. A marker at the start: the whole text is a letter in either case ("B", "b", "(b)", "B.", "B)",
       "Option B"), or a labelled letter followed by text ("B) turns left", "b. turns left", "(B) turns
       left"). A letter followed by text without punctuation is a word: "A person moves" is not A.
    2. An answer phrase anywhere: "answer" as a whole word, then ":" or "is", then a marker as in 1
       ("Answer: b", "The answer is (B).", "Final answer: C) text"). "Direction: left" is not D;
       "the answer is a person" is not A.
    3. If 1 and 2 found nothing, the text itself: it must equal exactly one option's text, ignoring case,
       surrounding whitespace, runs of inner whitespace and one trailing period.

    All letters found must agree; a hedge right after a marker ("A or B" is no marker at all; "A. or B",
    "(A) and (C)", "A. B.") or two answer phrases naming different letters score 0, as does a letter
    beyond the number of options. An answer region longer than ``TAIL_CHARS`` is read from its last
    ``TAIL_CHARS`` characters, by rule 2 only (its beginning, and so rules 1 and 3, are gone).
    Raises ``ValueError`` when the sample's answer is not a letter within its options.

    >>> s = Sample(task="mcq", answer="B", options=("left", "right", "up", "down"))
    >>> mcq_reward("<think>it turns</think><answer>(b)</answer>", s)
    1.0
    >>> mcq_reward("<answer>Right.</answer>", s), mcq_reward("Direction: left", s)
    (1.0, 0.0)
    >>> mcq_reward("<answer>A or B</answer>", s), mcq_reward("<answer>E</answer>", s)
    (0.0, 0.0)
    """
    count = _option_count(sample)
    target = sample.answer.strip().upper()
    if len(target) != 1 or not "A" <= target < chr(ord("A") + count):
        raise ValueError(f"mcq sample answer must be a letter A..{chr(ord('A') + count - 1)}, got {sample.answer!r}")
    text, cut = _region(completion)
    letters = _letters(text, cut)
    if not letters and not cut:
        by_text = _option_by_text(text, sample.options)
        letters = {by_text} if by_text else set()
    if len(letters) != 1:
        return 0.0
    (letter,) = letters
    return 1.0 if letter == target else 0.0


# The other reward families live in their own modules and register themselves on import; importing them here
# means importing this module is enough to see the whole catalogue.
from services.reward import bbox, graph, numeric, temporal  # noqa: E402,F401  (registers)
