"""The built-in `instructions` set: short-answer tasks over a few hundred topics, each with one to three
compatible verifiable constraints of IFEval's 25 instruction types, generated from a seed (no download).

Each constraint is worded by its own checker (`tools.instruction_checks.describe`), so the prompt says exactly
what the judge's `instruction_checks` tool will verify; ids and kwargs go to the prompt's meta in IFEval's form.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from configs.errors import ConfigError
from configs.splits import in_split
from tools.instruction_checks import describe

_TOPIC_GROUPS = {
    "animals": "owls, honey bees, octopuses, wolves, penguins, elephants, dolphins, ants, bats, camels, crows, "
    "frogs, giraffes, hedgehogs, jellyfish, koalas, lions, moths, otters, parrots, rabbits, salmon, sharks, "
    "snails, spiders, swans, tigers, tortoises, whales, zebras, beavers, butterflies, cats, dogs, horses",
    "food": "bread, cheese, rice, tea, coffee, chocolate, honey, olive oil, apples, bananas, tomatoes, "
    "potatoes, soup, noodles, pancakes, yogurt, lemons, garlic, salt, pepper, popcorn, dumplings, tacos, "
    "oranges, carrots, mushrooms, peanuts, strawberries, ice cream, pizza",
    "places": "deserts, rainforests, islands, volcanoes, glaciers, caves, lighthouses, libraries, markets, "
    "airports, harbors, castles, bridges, museums, parks, mountains, rivers, lakes, beaches, villages, "
    "train stations, gardens, farms, canyons, waterfalls, swamps, coral reefs, city squares, schools, hospitals",
    "objects": "umbrellas, bicycles, clocks, candles, keys, mirrors, pencils, scissors, maps, compasses, "
    "telescopes, kites, backpacks, lamps, chairs, shoes, hats, bottles, buttons, ladders, hammers, ropes, "
    "wallets, notebooks, glasses, spoons, blankets, pillows, paper clips, batteries",
    "science": "gravity, magnets, rainbows, volcanic eruptions, photosynthesis, the water cycle, eclipses, "
    "earthquakes, tides, lightning, sound waves, friction, electricity, fossils, atoms, the moon, comets, "
    "clouds, snowflakes, rust, evaporation, the heart, bones, sleep, vaccines, germs, DNA, the seasons, "
    "northern lights, black holes",
    "technology": "the printing press, the telephone, the internet, email, solar panels, wind turbines, "
    "electric cars, robots, satellites, microwaves, refrigerators, passwords, spreadsheets, search engines, "
    "smartphones, video calls, 3D printers, GPS, barcodes, elevators, traffic lights, cameras, headphones, "
    "calculators, keyboards, drones, radio, television, batteries in phones, washing machines",
    "activities": "running, swimming, cooking, gardening, painting, chess, knitting, hiking, camping, "
    "cycling, reading, writing letters, learning a language, playing the piano, dancing, fishing, yoga, "
    "photography, bird watching, baking, juggling, skateboarding, climbing, singing, volunteering, "
    "saving money, recycling, meditation, journaling, board games",
    "everyday life": "mornings, rainy days, birthdays, weekends, holidays, moving house, first jobs, "
    "neighbors, friendship, homework, public transport, queues, breakfast, alarm clocks, laundry, "
    "grocery lists, packing for a trip, lost keys, small talk, thank-you notes, time zones, habits, "
    "patience, kindness, boredom, curiosity, teamwork, deadlines, apologies, compliments",
    "history and culture": "the pyramids, the Olympic Games, ancient Rome, the Silk Road, castles in the "
    "Middle Ages, the first airplanes, the moon landing, the invention of paper, folk tales, museums, "
    "festivals, proverbs, calendars, coins, postcards, lighthouses of old, jazz, opera, puppets, "
    "origami, pottery, maps of the ancient world, the telegraph, sailing ships, trains of the 1800s, "
    "libraries of antiquity, board games of history, the alphabet, sundials, windmills",
    "work": "job interviews, teachers, nurses, farmers, firefighters, librarians, chefs, pilots, "
    "carpenters, mail carriers, bakers, scientists, engineers, gardeners, tailors, bus drivers, "
    "architects, translators, plumbers, beekeepers",
}
TOPICS = sorted({t.strip() for group in _TOPIC_GROUPS.values() for t in group.split(",") if t.strip()})

# Tasks that invite a short answer (a small model otherwise writes until max_tokens).
TASKS = [
    "Write a short note about {topic}.",
    "Explain what makes {topic} interesting.",
    "Describe {topic} to a ten-year-old.",
    "List a few facts about {topic}.",
    "Give one piece of advice about {topic}.",
    "Write a short poem about {topic}.",
    "Write a two-line slogan about {topic}.",
    "Write a short riddle whose answer is {topic}.",
    "Summarize why people care about {topic}.",
    "Write a brief postcard message that mentions {topic}.",
    "Name three things you might notice about {topic}.",
    "Write a one-sentence fun fact about {topic}.",
]
# Yes/no questions: the only tasks that IFEval's constrained response ("My answer is yes.") fits.
YES_NO_TASKS = [
    "Is {topic} something most people see every week?",
    "Would a child enjoy learning about {topic}?",
]

KEYWORDS = ["simple", "future", "history", "color", "water", "friend", "light", "small", "story", "morning",
            "quiet", "bright", "journey", "secret", "season", "memory", "garden", "music"]
COMMON_WORDS = ["very", "important", "many", "also", "really", "great", "people", "thing", "good", "and"]
FIRST_WORDS = ["first", "then", "also", "finally", "today", "imagine", "remember", "sometimes"]
LANGUAGES = ["es", "fr", "de", "it", "pt"]
END_PHRASES = ["Any other questions?", "Is there anything else I can help with?"]


def _relation(rng: random.Random, at_least: list[int], less_than: list[int], names: tuple[str, str]) -> dict[str, Any]:
    count, relation = names
    if rng.random() < 0.5:
        return {count: rng.choice(at_least), relation: "at least"}
    return {count: rng.choice(less_than), relation: "less than"}


def _letter(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"letter": rng.choice("zqxjk"), "let_frequency": rng.choice([1, 2, 3]), "let_relation": "less than"}
    return {"letter": rng.choice("etaoins"), "let_frequency": rng.choice([5, 8, 12]), "let_relation": "at least"}


def _nth_paragraph(rng: random.Random) -> dict[str, Any]:
    paragraphs = rng.choice([2, 3])
    return {"num_paragraphs": paragraphs, "nth_paragraph": rng.randint(1, paragraphs),
            "first_word": rng.choice(FIRST_WORDS)}


# IFEval's 25 instruction types and how this set draws their parameters (ranges a short answer can meet).
PARAMETERS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "keywords:existence": lambda rng: {"keywords": rng.sample(KEYWORDS, 2)},
    "keywords:frequency": lambda rng: {"keyword": rng.choice(KEYWORDS)}
    | _relation(rng, [2, 3], [2, 3], ("frequency", "relation")),
    "keywords:forbidden_words": lambda rng: {"forbidden_words": sorted(rng.sample(COMMON_WORDS, 2))},
    "keywords:letter_frequency": _letter,
    "language:response_language": lambda rng: {"language": rng.choice(LANGUAGES)},
    "length_constraints:number_sentences": lambda rng: _relation(rng, [2, 3], [2, 3, 4], ("num_sentences", "relation")),
    "length_constraints:number_paragraphs": lambda rng: {"num_paragraphs": rng.choice([2, 3])},
    "length_constraints:number_words": lambda rng: _relation(
        rng, [15, 25, 40], [20, 30, 50], ("num_words", "relation")
    ),
    "length_constraints:nth_paragraph_first_word": _nth_paragraph,
    "detectable_content:number_placeholders": lambda rng: {"num_placeholders": rng.choice([1, 2])},
    "detectable_content:postscript": lambda rng: {"postscript_marker": rng.choice(["P.S.", "P.P.S"])},
    "detectable_format:number_bullet_lists": lambda rng: {"num_bullets": rng.choice([2, 3, 4])},
    "detectable_format:constrained_response": lambda rng: {},
    "detectable_format:number_highlighted_sections": lambda rng: {"num_highlights": rng.choice([1, 2, 3])},
    "detectable_format:multiple_sections": lambda rng: {"section_spliter": rng.choice(["Section", "SECTION"]),
                                                        "num_sections": rng.choice([2, 3])},
    "detectable_format:json_format": lambda rng: {},
    "detectable_format:title": lambda rng: {},
    "combination:two_responses": lambda rng: {},
    "combination:repeat_prompt": lambda rng: {},  # prompt_to_repeat: the task, filled in when composed
    "startend:end_checker": lambda rng: {"end_phrase": rng.choice(END_PHRASES)},
    "change_case:capital_word_frequency": lambda rng: _relation(
        rng, [2, 3], [2, 4], ("capital_frequency", "capital_relation")
    ),
    "change_case:english_capital": lambda rng: {},
    "change_case:english_lowercase": lambda rng: {},
    "punctuation:no_comma": lambda rng: {},
    "startend:quotation": lambda rng: {},
}
INSTRUCTION_TYPES = list(PARAMETERS)
CONSTRAINED = "detectable_format:constrained_response"

# Pairs this set never combines beyond IFEval's own conflict table: one would make the other impossible or
# its check meaningless (a response in capitals cannot start a paragraph with a lowercase checker's word...).
EXTRA_CONFLICTS = [
    ("change_case:english_capital", "detectable_format:multiple_sections"),
    ("change_case:english_lowercase", "detectable_format:multiple_sections"),
    ("change_case:english_capital", "startend:end_checker"),
    ("change_case:english_lowercase", "startend:end_checker"),
    ("change_case:english_capital", "detectable_content:postscript"),
    ("change_case:english_lowercase", "detectable_content:postscript"),
    ("combination:repeat_prompt", "length_constraints:number_words"),
    ("combination:repeat_prompt", "length_constraints:number_sentences"),
    ("combination:repeat_prompt", "length_constraints:nth_paragraph_first_word"),
    ("combination:repeat_prompt", "length_constraints:number_paragraphs"),
    ("combination:repeat_prompt", "startend:quotation"),
    ("combination:repeat_prompt", "change_case:english_capital"),
    ("combination:repeat_prompt", "change_case:english_lowercase"),
    ("combination:repeat_prompt", "keywords:forbidden_words"),
    ("combination:two_responses", "length_constraints:number_paragraphs"),
    ("combination:two_responses", "length_constraints:nth_paragraph_first_word"),
    ("combination:two_responses", "startend:quotation"),
    ("startend:quotation", "startend:end_checker"),
    ("startend:quotation", "length_constraints:nth_paragraph_first_word"),
    ("language:response_language", "length_constraints:nth_paragraph_first_word"),
    ("language:response_language", "change_case:capital_word_frequency"),
    ("language:response_language", "detectable_format:title"),
    ("length_constraints:number_paragraphs", "detectable_format:multiple_sections"),
    ("length_constraints:nth_paragraph_first_word", "detectable_format:multiple_sections"),
    ("length_constraints:nth_paragraph_first_word", "detectable_format:title"),
    ("length_constraints:nth_paragraph_first_word", "detectable_format:number_bullet_lists"),
]


def conflicts() -> dict[str, set[str]]:
    """Which instruction types never go together: IFEval's table (made symmetric, each type with itself)
    and EXTRA_CONFLICTS."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    table: dict[str, set[str]] = {kind: set() for kind in INSTRUCTION_TYPES}
    pairs = [(a, b) for a, others in INSTRUCTION_CONFLICTS.items() for b in others] + EXTRA_CONFLICTS
    for a, b in pairs + [(kind, kind) for kind in INSTRUCTION_TYPES]:
        if a in table and b in table:
            table[a].add(b)
            table[b].add(a)
    return table


def _draw_instructions(rng: random.Random, table: dict[str, set[str]]) -> list[str]:
    wanted = rng.choices([1, 2, 3], weights=[45, 40, 15])[0]
    pool = [kind for kind in INSTRUCTION_TYPES if kind != CONSTRAINED]
    chosen: list[str] = []
    while pool and len(chosen) < wanted:
        kind = rng.choice(pool)
        chosen.append(kind)
        pool = [other for other in pool if other not in table[kind]]
    return chosen


def instruction_prompts(n: int = 100, seed: int = 0, split: str = "all") -> list[dict[str, Any]]:
    """`n` distinct prompts of `split`, reproducible from `seed`: a task on a topic and its constraints, worded
    by their checkers, with `instruction_id_list` and `kwargs` in IFEval's form."""
    rng = random.Random(seed)
    table = conflicts()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    misses = 0  # draws in a row that repeated an earlier prompt or fell in the other split
    while len(rows) < n:
        if misses > 5000:
            raise ConfigError(
                f"prompts: the built-in instructions set ran out of distinct prompts after {len(rows)} (asked for {n})"
            )
        topic = rng.choice(TOPICS)
        yes_no = rng.random() < 0.08
        task = rng.choice(YES_NO_TASKS if yes_no else TASKS).format(topic=topic)
        task = task[0].upper() + task[1:]
        kinds = [CONSTRAINED] if yes_no else _draw_instructions(rng, table)
        kwargs = [PARAMETERS[kind](rng) for kind in kinds]
        for kind, parameters in zip(kinds, kwargs, strict=True):
            if kind == "combination:repeat_prompt":
                parameters["prompt_to_repeat"] = task
        prompt = " ".join([task, *(describe(kind, parameters) for kind, parameters in zip(kinds, kwargs, strict=True))])
        if prompt in seen or not in_split(prompt, split):
            misses += 1
            continue
        misses = 0
        seen.add(prompt)
        rows.append({"prompt": prompt, "instruction_id_list": kinds, "kwargs": kwargs, "topic": topic,
                     "task": "instructions"})
    return rows
