"""The tags completions use and the region an answer is read from, shared by every reward family.

Work stays bounded on huge completions: every scan is either a C-level ``str`` method over the whole text (linear,
no backtracking) or a regular expression over at most ``TAIL_CHARS`` characters, so a 1 MB completion costs about
what a 4 KiB one does. Families that need a longer window (tracking boxes, scene graphs) state its size in their
module and keep their patterns linear.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# The final answer sits at the end of a completion by convention; reading only its last 4 KiB keeps the
# regex work constant however long the model rambles, and a letter buried deeper than that is not an answer.
TAIL_CHARS = 4096


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
