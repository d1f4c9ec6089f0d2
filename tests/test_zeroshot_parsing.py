"""The reply parser against a table of real-looking chat-model replies (what small and large models
actually write back), plus the echo, hallucination and truncation cases."""

from __future__ import annotations

import re

import pytest

from tcf.zeroshot.parsing import norm, parse
from tcf.zeroshot.prompts import PromptTemplate

CANDS = ["Toy Story", "GoldenEye", "Usual Suspects, The", "Star Wars", "Babe"]  # presented as [1]..[5]
FOUR = CANDS[:4]  # choice: A..D
HUNDRED = [f"Movie number {i}" for i in range(1, 101)]
# 20 ml-100k titles presented as [1]..[20]; many begin with a number that is also a candidate number
ML = ["Toy Story", "12 Angry Men", "101 Dalmatians", "2001: A Space Odyssey", "Babe", "8 1/2", "Twelve Monkeys",
      "187", "3 Ninjas: High Noon At Mega Mountain", "20,000 Leagues Under the Sea", "1-900", "Star Wars",
      "39 Steps, The", "Fargo", "2 Days in the Valley", "Heat", "Seven (Se7en)", "8 Seconds", "Casino",
      "Usual Suspects, The"]
# a title that is a bare number within the candidate numbers ("10", Blake Edwards 1979) at slot [2]
TEN = ["Toy Story", "10", "Heat", "Babe", "Fargo", "Seven", "Casino", "Alien", "Big", "Jaws", "Clue", "Ran"]

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
    # --- rank: titles that begin with a number (ml-100k has dozens) are titles, not candidate numbers
    ("ml", "1. 12 Angry Men\n2. 101 Dalmatians\n3. 2001: A Space Odyssey\n4. 8 1/2\n"
           "5. 3 Ninjas: High Noon At Mega Mountain", [1, 2, 3, 5, 8], "partial"),
    ("ml", "12 Angry Men\n2 Days in the Valley\n8 Seconds\n20,000 Leagues Under the Sea\n1-900", [1, 14, 17, 9, 10],
     "partial"),
    ("ml", "**12 Angry Men**\n**8 1/2**\n**Star Wars**", [1, 5, 11], "partial"),
    ("ml", "1. 12 Angry Men (1957)\n2. 2001: A Space Odyssey (1968)\n3. Usual Suspects, The (1995)", [1, 3, 19],
     "partial"),
    ("ml", "12 Angry Men, 2 Days in the Valley, Babe", [1, 14, 4], "partial"),
    ("ml", "1. [2] 12 Angry Men\n2. [15] 2 Days in the Valley\n3. [18] 8 Seconds", [1, 14, 17], "partial"),
    ("ml", "[2] 12 Angry Men > [12] Star Wars > [8] 187", [1, 11, 7], "partial"),
    ("ml", "1. [2]\n2. 8 Seconds\n3. 12\n4. Fargo\n5. 12 Angry Men", [1, 17, 11, 13], "partial"),  # dup dropped
    ("ml", "2, 12, Babe, 8 Seconds, #20", [1, 11, 4, 17, 19], "partial"),  # indices and titles in one list
    ("ml", "12 - Star Wars\n2 - 12 Angry Men\n8) 187\n#3", [11, 1, 7, 2], "partial"),
    ("ml", "Top pick: 187. Then 12 Angry Men and 8 Seconds.", [7, 1, 17], "partial"),
    ("ml", "12., 2., 8.", [11, 1, 7], "partial"),
    ("rank", "5 Babe\n4 Star Wars", [4, 3], "partial"),
    ("ml", "Ranking: 2, 1, 3 and 4", [1, 0, 2, 3], "partial"),
    ("ml", "12 Angry Men and 8 Seconds, then Babe", [1, 17, 4], "partial"),  # a number before a title that is not a whole title
    ("ten", "1. 10\n2. Heat\n3. Jaws", [1, 2, 9], "partial"),  # an exact title beats the candidate number
    ("ten", "[10], [2], [3]", [9, 1, 2], "partial"),  # in brackets it is the number the prompt showed
    # --- reasoning models: the answer is what follows the reasoning block, never the reasoning
    ("rank", "<think>\nThe user liked crime films. [4] Star Wars? Maybe 1, 2, 3, 4, 5. No: Babe fits better.\n"
             "</think>\n\n5, 4, 1, 2, 3", [4, 3, 0, 1, 2], "valid"),
    ("rank", "<think>\nCandidates: Toy Story, GoldenEye, Usual Suspects, Star Wars, Babe. Crime first.\n</think>\n"
             "1. Usual Suspects, The\n2. Star Wars\n3. Toy Story\n4. GoldenEye\n5. Babe", [2, 3, 0, 1, 4], "valid"),
    ("rank", "<think>\n\n</think>\n\n3, 1, 2, 5, 4", [2, 0, 1, 4, 3], "valid"),  # thinking switched off
    ("rank", "Okay, the user watched Fargo. Toy Story, then Babe?\n</think>\n\nStar Wars, GoldenEye", [3, 1],
     "partial"),  # the chat template opened the block: only its end is in the reply
    ("rank", "<Thinking>Babe is a family film; rank it 1, 2, 3.</Thinking>\nRanking: 4, 2", [3, 1], "partial"),
    ("rank", "<think>\nThe user likes sci-fi. Star Wars first, then Toy Story, so 4, 1, 2", [], "failed"),  # cut off
    ("rank", "<think>I would rank them 4, 1, 2, 3, 5.</think>", [], "failed"),  # nothing after the reasoning
    ("rank", "<think>Star Wars, Babe</think>\n   \n", [], "failed"),
    ("choice", "<think>\nA is Toy Story, but the user prefers action: B? Actually D.\n</think>\nAnswer: D", [3],
     "valid"),
    ("choice", "<think>\nOption B looks right", [], "failed"),
    ("topk-json", "<think>maybe [1, 2, 3]? no</think>\n[12, 5, 40]", [11, 4, 39], "valid"),
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
    cands = {"rank": CANDS, "choice": FOUR, "topk-json": HUNDRED, "ml": ML, "ten": TEN}[protocol]
    p = parse(reply, cands, "rank" if protocol in ("ml", "ten") else protocol, k=3)
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


@pytest.mark.parametrize("piece,index", [("12", 11), ("12.", 11), ("[12]", 11), ("12)", 11), ("#12", 11),
                                         ("12 - Star Wars", 11), ("(12)", 11), ("12:", 11), ("12,", 11),
                                         ("12 Angry Men", None), ("8 1/2", None), ("1-900", None),
                                         ("20,000 Leagues Under the Sea", None), ("1.5", None)])
def test_a_number_is_an_index_only_where_it_stands_as_one(piece, index):
    from tcf.zeroshot.parsing import Matcher

    pos, looks = Matcher(ML, letters=False).index(piece)
    assert (pos, looks) == (index, index is not None)


def test_reasoning_is_skipped_and_noted():
    p = parse("<think>\n1, 2, 3, 4, 5\n</think>\n5, 4, 3, 2, 1", CANDS, "rank")
    assert p.ranking == [4, 3, 2, 1, 0] and p.notes == ["reasoning block skipped"]
    cut = parse("<think>\nStar Wars, then Babe, then", CANDS, "rank")
    assert (cut.status, cut.method) == ("failed", "reasoning") and "never closed" in cut.notes[0]


# a real ml-100k rank prompt as the study builds it: user 1's last 10 movies, 20 sampled candidates
ML_HISTORY = ["Birdcage, The", "Mighty Aphrodite", "Beautiful Girls", "Ace Ventura: Pet Detective",
              "American President, The", "Englishman Who Went Up a Hill, But Came Down a Mountain, The",
              "Nutty Professor, The", "Kids in the Hall: Brain Candy", "Up in Smoke", "Home Alone"]
ML_CANDS = ["Nowhere", "Annie Hall", "Star Trek V: The Final Frontier", "Spirits of the Dead (Tre passi nel delirio)",
            "Bloody Child, The", "Trees Lounge", "What's Love Got to Do with It", "Lamerica",
            "Adventures of Pinocchio, The", "Bloodsport 2", "Donnie Brasco", "Sexual Life of the Belgians, The",
            "Four Days in September", "Apollo 13", "Wild Things", "Spitfire Grill, The", "Next Karate Kid, The",
            "Freeway", "Angus", "Forrest Gump"]
NEW_ORDER = [13, 19, 10, 1, 2, 16, 9, 18, 5, 0, 3, 4, 6, 7, 8, 11, 12, 14, 15, 17]


def ml_prompt(protocol: str = "rank") -> str:
    return PromptTemplate.named(protocol).render(history=ML_HISTORY, candidates=ML_CANDS, source="ml-100k")


@pytest.mark.parametrize("line", ["[{i}] {t}", "{k}. [{i}] {t}", "{k}. {t}"])
def test_a_reordered_copy_of_the_candidate_lines_is_a_ranking_not_an_echo(line):
    prompt = ml_prompt()
    reply = "\n".join(line.format(k=k, i=i + 1, t=ML_CANDS[i]) for k, i in enumerate(NEW_ORDER, start=1))
    p = parse(reply, ML_CANDS, "rank", prompt=prompt)
    assert (p.status, p.ranking) == ("valid", NEW_ORDER), p
    top = "\n".join(line.format(k=k, i=i + 1, t=ML_CANDS[i]) for k, i in enumerate(NEW_ORDER[:5], start=1))
    assert parse(top, ML_CANDS, "rank", prompt=prompt).ranking == NEW_ORDER[:5]


@pytest.mark.parametrize("protocol", ["rank", "rank-recency", "rank-icl", "topk-json", "choice"])
def test_copies_of_the_prompt_are_echoes(protocol):
    cands = ML_CANDS[:4] if protocol == "choice" else ML_CANDS
    prompt = PromptTemplate.named(protocol).render(history=ML_HISTORY, candidates=cands, k=5, source="ml-100k")
    shown = [ln for ln in prompt.splitlines() if re.match(r"^(?:\[\d+\]|[A-D]\.) ", ln)]
    assert len(shown) == len(cands)
    for reply in (prompt,  # verbatim
                  prompt[:len(prompt) // 3],  # cut off by max_new_tokens inside the history
                  prompt[:prompt.index("\n9. ") + 3],  # ... right after a history number ("9."): no index
                  prompt[:prompt.index(shown[0]) + 8],  # cut off inside the first candidate line
                  "\n".join(shown),  # the candidate lines, in presented order
                  "Sure! Here are the movies:\n" + "\n".join(shown[:3])):  # a prefix of them
        p = parse(reply, cands, protocol, k=5, prompt=prompt)
        assert (p.status, p.method, p.ranking) == ("failed", "echo", []), (reply, p)


def test_an_answer_after_restated_history_or_instructions_is_read():
    prompt = ml_prompt()
    history = "\n".join(ln for ln in prompt.splitlines()[:11])
    p = parse(history + "\n\nMy ranking: 14, 20, 11, 2, 3", ML_CANDS, "rank", prompt=prompt)
    assert p.ranking == [13, 19, 10, 1, 2] and p.method != "echo"
    # presented order written as numbers is the model's (position-biased) answer, not a copy of the prompt
    p = parse(", ".join(str(i) for i in range(1, 21)), ML_CANDS, "rank", prompt=prompt)
    assert (p.status, p.ranking) == ("valid", list(range(20)))


# choice options whose ml-100k titles hold a standalone capital A (the letter of another option)
ACHOICE = ["Toy Story", "2001: A Space Odyssey", "Few Good Men, A", "Clockwork Orange, A"]  # A..D


@pytest.mark.parametrize("reply,ranking", [
    # an exact candidate title is that candidate, not the letter inside it
    ("Few Good Men, A", [2]),
    ("Clockwork Orange, A", [3]),
    ("I would recommend Clockwork Orange, A", [3]),
    ("2001: A Space Odyssey", [1]),
    ("The answer is A Few Good Men", [2]),
    ("Answer: A Clockwork Orange.", [3]),
    ("I would recommend A Few Good Men, a gripping courtroom drama.", [2]),
    ("**2001: A Space Odyssey (1968)**", [1]),
    # a letter standing as the answer
    ("A", [0]),
    ("A.", [0]),
    ("(B)", [1]),
    ("Answer: C", [2]),
    ("Answer: **D**", [3]),
    ("C) Few Good Men, A", [2]),
    ("D. Clockwork Orange, A", [3]),
    ("B - 2001: A Space Odyssey", [1]),
    ("My pick: C) Few Good Men, A", [2]),
    ("I would choose D because the user likes classics.", [3]),
    ("Toy Story is a family film and the user watches thrillers, so the answer is D.", [3]),
    # a capital A that begins a title that is no candidate is no letter
    ("A Bronx Tale would suit this user.", []),
])
def test_a_capital_letter_inside_a_title_is_not_the_option_letter(reply, ranking):
    p = parse(reply, ACHOICE, "choice")
    assert (p.ranking, p.status) == (ranking, "valid" if ranking else "failed"), p
