"""The format rewards (``format``, ``answer_format``) and multiple choice (``mcq``); these three always score.

Completions follow ``<think>…</think><answer>…</answer>`` unless a task says otherwise; ``answer_format``
is the rule for tasks (and small models) that answer without thinking. The invariants every reward keeps are in
``services.reward.registry``.
"""

from __future__ import annotations

import re
import unicodedata

from services.reward.registry import Sample, register
from services.reward.text import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, answer_region

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
