"""Edge cases of the format and mcq rewards, and the registry they live in."""

import doctest
import math
import random

import pytest

from services.reward import catalogue, mcq, registry, text
from services.reward.catalogue import Sample, get
from services.reward.mcq import answer_format_reward, format_reward, mcq_reward
from services.reward.registry import register

FOUR = Sample(task="mcq", answer="B", options=("turn left", "turn right", "go straight", "stop"))
MB = 1 << 20
# The rewards an MCQ sample is a valid target for; test_rewards_properties.py covers every registered one.
LETTER_REWARDS = ("format", "answer_format", "mcq")


@pytest.mark.parametrize("module", [mcq, registry, text], ids=lambda m: m.__name__)
def test_docstring_examples_hold(module):
    assert doctest.testmod(module).failed == 0


# ------------------------------------------------------------------------------------------- registry


def test_registry_holds_the_rewards_by_name():
    assert catalogue.REGISTRY["format"] is format_reward
    assert get("answer_format") is answer_format_reward
    assert get("mcq") is mcq_reward


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="known rewards: answer_format, .*format, .*mcq"):
        get("mqc")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        register("mcq")(lambda completion, sample: 0.0)
    assert get("mcq") is mcq_reward


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        catalogue.REGISTRY["x"] = mcq_reward  # type: ignore[index]


# --------------------------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "completion",
    [
        "<think>a</think><answer>B</answer>",
        "\n <think>a</think>\n\n<answer>B</answer>\t\n",
        "<think></think><answer></answer>",
        "<think>multi\nline ✓ 左转 🎥</think> <answer>(B) turn right</answer>",
        "<think>a < b and c > d</think><answer>B</answer>",
    ],
)
def test_format_accepts_think_then_answer(completion):
    assert format_reward(completion, FOUR) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "B",
        "<answer>B</answer>",  # no thinking
        "<think>a</think>",  # no answer
        "<think>a</think><answer>B</answer> so B",  # text after
        "so <think>a</think><answer>B</answer>",  # text before
        "<think>a</think> so <answer>B</answer>",  # text between
        "<answer>B</answer><think>a</think>",  # wrong order
        "<think>a<think>b</think></think><answer>B</answer>",  # nested
        "<think>a</think><answer>A</answer><answer>B</answer>",  # duplicated answer
        "<think>a</think><think>b</think><answer>B</answer>",  # duplicated think
        "<think>a<answer>B</answer></think>",  # answer inside think
        "<think>a</think><answer>B",  # unclosed
        "<think>a</think><answer>B</answer",  # broken closing tag
        "<THINK>a</THINK><ANSWER>B</ANSWER>",  # tags are case-sensitive
        "<think>a</answer><answer>B</think>",  # crossed
        "\x00\xff\ufffd<think>",
    ],
)
def test_format_rejects_everything_else(completion):
    assert format_reward(completion, FOUR) == 0.0


def test_answer_format_accepts_only_a_lone_answer_block():
    assert answer_format_reward("<answer>B</answer>", FOUR) == 1.0
    assert answer_format_reward("  \n<answer> turn right </answer>\n", FOUR) == 1.0
    for bad in [
        "",
        "B",
        "<think>a</think><answer>B</answer>",
        "<answer>B</answer> because",
        "<answer>A</answer><answer>B</answer>",
        "<answer><answer>B</answer></answer>",
        "<answer>B",
        "<answer>B<think></answer>",
    ]:
        assert answer_format_reward(bad, FOUR) == 0.0, bad


def test_format_reads_a_megabyte_completion():
    thinking = "the cup moves left. " * (MB // 20)
    assert format_reward(f"<think>{thinking}</think><answer>B</answer>", FOUR) == 1.0
    assert format_reward(f"<think>{thinking}</think><answer>B</answer>{thinking}", FOUR) == 0.0
    assert format_reward(f"<think>x</think>{thinking}<answer>B</answer>", FOUR) == 0.0
    assert answer_format_reward(f"<answer>{thinking}</answer>", FOUR) == 1.0


# ------------------------------------------------------------------------------------------------ mcq


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>B</answer>",
        "<answer>b</answer>",  # a lone letter is unambiguous in either case
        "<answer> (B) </answer>",
        "<answer>(b)</answer>",
        "<answer>B.</answer>",
        "<answer>B)</answer>",
        "<answer>B:</answer>",
        "<answer>(B).</answer>",
        "<answer>B) turn right</answer>",
        "<answer>b) turn right</answer>",
        "<answer>B. turn right</answer>",
        "<answer>(B) turn right</answer>",
        "<answer>B: turn right</answer>",
        "<answer>Answer: B</answer>",
        "<answer>Answer: b</answer>",  # the lenient-extractor trap: this is B, not A
        "<answer>The answer is B.</answer>",
        "<answer>the answer is (b)</answer>",
        "<answer>**Final Answer:** **B**</answer>",
        "<answer>Option B</answer>",
        "<answer>`B`</answer>",
        "<answer>B. The answer is B.</answer>",  # every letter agrees
        "<answer>turn right</answer>",  # option text (rule 3)
        "<answer>  Turn   RIGHT. </answer>",  # case, inner whitespace and one trailing period ignored
        "<think>A) looks wrong</think>\n<answer>B</answer>",  # letters in the thinking do not count
        "<answer>A</answer> on second thought <answer>B</answer>",  # the last answer block counts
        "<think>hmm</think><answer>B",  # unclosed: a stop string swallowed </answer>
        "<think>(A) is wrong</think> B",  # no answer block: the text after </think>
        "B",  # no tags at all: the whole text
        "I looked at every frame. The answer is B",
        "<answer>（Ｂ）</answer>",  # full-width, NFKC
        "<answer>B) 向右转</answer>",
        "<answer>B) 🎥 ✓</answer>",
    ],
)
def test_mcq_reads_b(completion):
    assert mcq_reward(completion, FOUR) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "   ",
        "<answer></answer>",
        "<answer>A</answer>",  # plainly wrong
        "<answer>B</answer> then <answer>A</answer>",  # the last block says A
        "<answer>B</answer><answer>",  # the last block is empty
        # lenient-extractor traps: a letter that is only the start of a word or a sentence
        "<answer>Direction: right</answer>",  # not D, and no B either
        "<answer>Because the man turns</answer>",  # not B
        "<answer>Beyond the door</answer>",
        "<answer>B right</answer>",  # a letter then text needs ".", ")" or ":" to be a label
        "<answer>I think B</answer>",
        "<answer>The answer is B because it turns</answer>",
        "<answer>answers: B</answer>",  # "answer" must be a whole word
        # several different letters
        "<answer>A, B</answer>",
        "<answer>A or B</answer>",
        "<answer>B or A</answer>",
        "<answer>A/B</answer>",
        "<answer>(A) or (B)</answer>",
        "<answer>B. or A.</answer>",
        "<answer>B) A)</answer>",
        "<answer>B) and (C)</answer>",
        "<answer>Answer: B. Wait, the answer is C.</answer>",
        "<answer>AB</answer>",
        "<answer>turn</answer>",  # a prefix of two options' texts
        "<answer>B) turn right, no, the answer is A</answer>",
    ],
)
def test_mcq_does_not_read_b(completion):
    assert mcq_reward(completion, FOUR) == 0.0


def test_lowercase_words_in_sentences_never_count():
    for letter, sentence in [("A", "a person moves left"), ("I", "i think so"), ("A", "the answer is a person")]:
        sample = Sample(task="mcq", answer=letter, options=tuple("abcdefghi"))
        assert mcq_reward(f"<answer>{sentence}</answer>", sample) == 0.0, sentence
    # …while a lone lowercase letter is an answer
    assert mcq_reward("<answer>a</answer>", Sample(task="mcq", answer="A", options=("x", "y"))) == 1.0


def test_option_text_rule_needs_exactly_one_match():
    twins = Sample(task="mcq", answer="A", options=("left", "LEFT ", "right"))
    assert mcq_reward("<answer>left</answer>", twins) == 0.0
    labelled = Sample(task="mcq", answer="C", options=("A. left", "B. right", "C. A person moves"))
    assert mcq_reward("<answer>A person moves</answer>", labelled) == 1.0  # own labels are stripped
    assert mcq_reward("<answer>A person moves left</answer>", labelled) == 0.0
    # a letter wins over the text that follows it
    assert mcq_reward("<answer>A) turn right</answer>", FOUR) == 0.0


def test_letter_beyond_the_options_is_wrong():
    assert mcq_reward("<answer>E</answer>", FOUR) == 0.0
    assert mcq_reward("<answer>E) stop</answer>", FOUR) == 0.0
    five = Sample(task="mcq", answer="E", options=("a", "b", "c", "d", "e"))
    assert mcq_reward("<answer>E</answer>", five) == 1.0


def test_option_count_can_come_from_extra():
    sample = Sample(task="mcq", answer="c", extra={"num_options": 3})
    assert mcq_reward("<answer>C</answer>", sample) == 1.0
    assert mcq_reward("<answer>D</answer>", sample) == 0.0


@pytest.mark.parametrize(
    "sample",
    [
        Sample(task="mcq", answer="E", options=("a", "b", "c", "d")),  # answer beyond the options
        Sample(task="mcq", answer="B"),  # no options and no num_options
        Sample(task="mcq", answer="B", extra={"num_options": 27}),
        Sample(task="mcq", answer="turn right", options=("turn left", "turn right")),  # not a letter
        Sample(task="mcq", answer="", options=("x", "y")),
    ],
)
def test_a_malformed_sample_raises(sample):
    with pytest.raises(ValueError):
        mcq_reward("<answer>B</answer>", sample)


def test_mcq_on_megabyte_completions():
    filler = "the person walks past the door. " * (MB // 32)
    assert mcq_reward(f"<think>{filler}</think><answer>B</answer>", FOUR) == 1.0
    assert mcq_reward(f"{filler} So the answer is B.", FOUR) == 1.0  # no tags: the tail of the whole text
    # An answer region cut to its tail is read by answer phrases only: its beginning is gone.
    assert mcq_reward(f"<answer>B. {filler}</answer>", FOUR) == 0.0
    assert mcq_reward(f"B) {filler}", FOUR) == 0.0
    assert mcq_reward(f"<answer>{filler} Answer: B</answer>", FOUR) == 1.0
    # a mention before the last 4 KiB does not make a later answer ambiguous
    assert mcq_reward(f"the answer is A. {filler} the answer is B", FOUR) == 1.0
    # the cut lands mid-word: "…B. text" must not become a label
    tail = "x" * (text.TAIL_CHARS - 3)
    assert mcq_reward("y" * 100 + " aB. " + tail, FOUR) == 0.0
    assert mcq_reward("<answer>" + "B" * MB + "</answer>", FOUR) == 0.0


def test_mcq_survives_binary_garbage_and_odd_unicode():
    garbage = [
        bytes(range(256)).decode("latin-1"),
        "\ud800\udfff",  # lone surrogates
        "\x00<answer>\x00B\x00</answer>",
        "<answer>B\u0301</answer>",  # B with a combining accent is not the letter B
        "<answer>\u200bB\u200b</answer>",  # zero-width spaces
        "<answer>Β</answer>",  # Greek capital beta
        "<<<answer>>>B<</answer>>",
        "</answer></answer><answer><answer>",
    ]
    for completion in garbage:
        for name in LETTER_REWARDS:
            value = get(name)(completion, FOUR)
            assert value in (0.0, 1.0), (name, completion)
    assert mcq_reward("<answer>Β</answer>", FOUR) == 0.0


def test_every_reward_stays_in_range_on_random_text():
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "A", "b", "(", ")", ".", ":", " ", "\n", "answer is"]
    pieces += ["Answer:", "option", "turn right", "é", "\u200b", "\x00", "🎥", "<", ">", "/"]
    for _ in range(2000):
        completion = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        for name in LETTER_REWARDS:
            value = get(name)(completion, FOUR)
            assert math.isnan(value) or 0.0 <= value <= 1.0, (name, completion)
