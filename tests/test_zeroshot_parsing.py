"""The reply parser against a table of real-looking chat-model replies (what small and large models
actually write back), plus the echo, hallucination and truncation cases."""

from __future__ import annotations

import pytest

from tcf.zeroshot.parsing import norm, parse
from tcf.zeroshot.prompts import PromptTemplate

CANDS = ["Toy Story", "GoldenEye", "Usual Suspects, The", "Star Wars", "Babe"]  # presented as [1]..[5]
FOUR = CANDS[:4]  # choice: A..D
HUNDRED = [f"Movie number {i}" for i in range(1, 101)]

# (protocol, reply, expected ranking as 0-based positions, expected status)
TABLE = [
    # --- rank: the asked format and its near misses
    ("rank", "3, 1, 2, 5, 4", [2, 0, 1, 4, 3], "valid"),
    ("rank", "[3], [1], [2], [5], [4]", [2, 0, 1, 4, 3], "valid"),
    ("rank", "[3] > [1] > [2] > [5] > [4]", [2, 0, 1, 4, 3], "valid"),
    ("rank", "3 1 2 5 4", [2, 0, 1, 4, 3], "valid"),
    ("rank", "Ranking: 4, 2, 5, 1, 3", [3, 1, 4, 0, 2], "valid"),
    ("rank", "Here is my ranking:\n4, 2, 5, 1, 3\nI hope this helps!", [3, 1, 4, 0, 2], "valid"),
    ("rank", "1. [3] Usual Suspects, The\n2. [1] Toy Story\n3. [4] Star Wars\n4. [2] GoldenEye\n5. [5] Babe",
     [2, 0, 3, 1, 4], "valid"),
    ("rank", "1. Star Wars\n2. Toy Story\n3. The Usual Suspects\n4. Babe\n5. GoldenEye", [3, 0, 2, 4, 1], "valid"),
    ("rank", "1. STAR WARS (1977)\n2. toy story\n3. Babe", [3, 0, 4], "partial"),
    ("rank", "**1.** [4] Star Wars\n**2.** [2] GoldenEye", [3, 1], "partial"),
    ("rank", "20. 3, 1, 2, 5, 4", [2, 0, 1, 4, 3], "valid"),  # smollm2: a stray enumerator, out of range
    ("rank", "5, 3, 3, 1, 5, 2, 4", [4, 2, 0, 1, 3], "valid"),  # duplicates dropped
    ("rank", "3, 1, 9, 2, 12, 5, 4", [2, 0, 1, 4, 3], "valid"),  # out-of-range numbers ignored
    ("rank", "1. Star Wars\n2. The Empire Strikes Back\n3. Babe", [3, 4], "partial"),  # hallucinated title
    ("rank", "1. Star Wars\n2. Fargo\n3. Toy Stroy", [3, 0], "partial"),  # history title ignored; typo fuzzy
    ("rank", "I would recommend Star Wars first, then Toy Story and Babe.", [3, 0, 4], "partial"),
    ("rank", "Based on your history, you will probably enjoy [4] Star Wars the most, followed by [1].",
     [3, 0], "partial"),
    ("rank", "Je recommande : 2, 4, 1, 3, 5", [1, 3, 0, 2, 4], "valid"),  # another language, numbers kept
    ("rank", "我推荐你看这些电影。", [], "failed"),  # another language, nothing to read
    ("rank", "", [], "failed"),
    ("rank", "   \n ", [], "failed"),
    ("rank", "I'm sorry, but I can't determine your preferences from this information.", [], "failed"),
    ("rank", "3, 1, 2,", [2, 0, 1], "partial"),  # cut off by max_new_tokens
    # --- choice
    ("choice", "B", [1], "valid"),
    ("choice", "(C)", [2], "valid"),
    ("choice", "Answer: D. Star Wars", [3], "valid"),
    ("choice", "The answer is **A**.", [0], "valid"),
    ("choice", "I would choose B because the user likes action films.", [1], "valid"),
    ("choice", "A great pick would be GoldenEye.", [1], "valid"),  # "A" as an article, title found
    ("choice", "Star Wars", [3], "valid"),
    ("choice", "E", [], "failed"),  # a letter not offered
    ("choice", "The user will most likely watch something new.", [], "failed"),
    # --- topk-json (k = 3 of 100 here)
    ("topk-json", "[12, 5, 40]", [11, 4, 39], "valid"),
    ("topk-json", "```json\n[12, 5, 40]\n```", [11, 4, 39], "valid"),
    ("topk-json", "Here are the top 3: [\"12\", \"5\", \"40\"]", [11, 4, 39], "valid"),
    ("topk-json", "[12, 5, 12, 40]", [11, 4, 39], "valid"),
    ("topk-json", "[12, 5, 4", [11, 4], "partial"),  # truncated: the last number may be cut, so it is dropped
    ("topk-json", "[12, 5, 4,", [11, 4, 3], "valid"),  # truncated after a separator: all complete
    ("topk-json", "[\"Movie number 7\", \"Movie number 3\", \"Movie number 99\"]", [6, 2, 98], "valid"),
    ("topk-json", "[101, 0, 7]", [6], "partial"),  # out of range ignored
    ("topk-json", "1. [12] Movie number 12\n2. [5] Movie number 5\n3. [40] Movie number 40", [11, 4, 39], "valid"),
    ("topk-json", "{\"top\": }", [], "failed"),
    ("topk-json", "```json\n{\n  \"id\": 10,\n  \"name\": \"Movie number 7\",\n  \"genres\": [\n    \"Action\",\n"
                  "    \"Comedy\",", [6], "partial"),  # smollm2: an object with a genres array, a title inside
    ("topk-json", "```python\nimport json\n\ndef get_json_list(json_data):\n    return json.loads(json_data)\n",
     [], "failed"),  # smollm2: code instead of an answer
]


@pytest.mark.parametrize("protocol,reply,ranking,status", TABLE)
def test_reply_table(protocol, reply, ranking, status):
    cands = {"rank": CANDS, "choice": FOUR, "topk-json": HUNDRED}[protocol]
    p = parse(reply, cands, protocol, k=3)
    assert (p.ranking, p.status) == (ranking, status), p


def test_table_is_large_enough():
    assert len(TABLE) >= 30


def test_duplicates_and_invalid_entries_are_counted():
    p = parse("5, 3, 3, 9, 1, 5, 2, 4", CANDS, "rank")
    assert p.n_duplicates == 2 and p.n_invalid == 1


def test_a_reply_that_repeats_the_prompt_is_an_echo_not_a_ranking():
    prompt = PromptTemplate.named("rank").render(history=["Fargo", "Heat", "Casino"], candidates=CANDS, source="ml-100k")
    p = parse(prompt, CANDS, "rank", prompt=prompt)
    assert (p.status, p.method, p.ranking) == ("failed", "echo", [])
    # a real answer that merely mentions a title from the prompt is not an echo
    assert parse("4, 1, 2, 3, 5", CANDS, "rank", prompt=prompt).status == "valid"


def test_full_ranking_puts_unranked_candidates_last_in_presented_order():
    assert parse("4, 2", CANDS, "rank").full(5) == [3, 1, 0, 2, 4]


def test_title_normalisation_handles_movielens_articles_and_accents():
    assert norm("Usual Suspects, The") == norm("The Usual Suspects") == "the usual suspects"
    assert norm("Misérables, Les (1995)") == "les miserables"
    p = parse("1. Les Miserables\n2. La Cité des enfants perdus", ["Cité des enfants perdus, La", "Misérables, Les"],
              "rank")
    assert p.ranking == [1, 0] and p.status == "valid"
