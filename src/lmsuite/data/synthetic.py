"""The built-in corpus: stories, facts, arithmetic and duplicates whose ground truth is known."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmsuite.config import SyntheticConfig
from lmsuite.durable import (
    fsync_tree,
    put_back_moved_aside,
    replace_folder,
    temporary,
    write_file,
)
from lmsuite.errors import LmsuiteError

MALE_NAMES = ["James", "John", "Robert", "Michael", "David", "William", "Richard", "Joseph",
              "Thomas", "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven",
              "Andrew", "Kenneth", "Joshua", "Kevin", "Brian", "George", "Edward", "Ronald",
              "Timothy", "Jason", "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric",
              "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Frank", "Raymond", "Gregory"]
FEMALE_NAMES = ["Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
                "Sarah", "Karen", "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley",
                "Kimberly", "Emily", "Donna", "Michelle", "Dorothy", "Carol", "Amanda", "Melissa",
                "Deborah", "Stephanie", "Rebecca", "Sharon", "Laura", "Cynthia", "Kathleen", "Amy",
                "Angela", "Helen", "Anna", "Brenda", "Pamela", "Nicole", "Emma", "Samantha"]
# Occupations whose pronouns the corpus skews towards "he", towards "she", or not at all.
MALE_SKEWED = ["mechanic", "carpenter", "pilot", "engineer", "farmer", "soldier", "plumber"]
FEMALE_SKEWED = ["nurse", "secretary", "librarian", "receptionist", "dancer", "hairdresser",
                 "housekeeper"]
BALANCED = ["doctor", "writer", "painter", "lawyer", "chef", "baker", "singer"]
OCCUPATIONS = MALE_SKEWED + FEMALE_SKEWED + BALANCED
PLACES = ["Ashford", "Brookfield", "Clearwater", "Dunmore", "Elmwood", "Fairview", "Glenrock",
          "Hillcrest", "Ironbridge", "Juniper", "Kingsport", "Lakeside", "Millbrook", "Northgate",
          "Oakridge", "Pinehurst", "Queensbury", "Riverside", "Stonehaven", "Thornbury"]
OBJECTS = ["lantern", "compass", "violin", "umbrella", "notebook", "teapot", "bicycle", "kite",
           "hammer", "basket", "scarf", "telescope", "clock", "mirror", "guitar", "candle",
           "wallet", "ribbon", "shovel", "map", "key", "bottle", "drum", "saddle", "ladder",
           "bucket", "feather", "globe", "helmet", "pillow"]
BUILDINGS = ["market", "library", "station", "harbor", "bakery", "school", "church", "museum",
             "garden", "bridge"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "grey", "brown"]
SYLLABLES = ["ka", "lo", "mir", "ven", "tha", "dro", "sel", "qui", "zan", "bor", "eth", "ul", "nim",
             "par", "ros", "vek", "lin", "dor", "fae", "gri"]

# Spanish stories exercise the tokenizer beyond English; they carry no planted ground truth.
SPANISH_PLACES = ["Málaga", "Cádiz", "León", "Córdoba", "Jaén", "Ávila", "Cuenca", "Logroño"]
SPANISH_OBJECTS = ["linterna", "brújula", "guitarra", "cuaderno", "tetera", "bicicleta",
                   "cometa", "cesta", "bufanda", "campana"]


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _pronouns(male: bool) -> dict[str, str]:
    return {"he": "he" if male else "she", "him": "him" if male else "her",
            "his": "his" if male else "her", "self": "himself" if male else "herself",
            "He": "He" if male else "She", "His": "His" if male else "Her"}


STORY_OPENINGS = [
    "{name} was {a_occ} who lived in {place}.",
    "In {place} there lived {a_occ} named {name}.",
    "{name} worked as {a_occ} in the town of {place}.",
]
STORY_MIDDLE = [
    "Every morning the {occ} walked to the {building}, and {he} always carried {his} {obj}.",
    "The {occ} said that {he} would finish the work before dark.",
    "People in {place} knew the {occ} well, and they often asked {him} for advice.",
    "One day the {occ} looked at {self} in the window of the {building} and laughed.",
    "{He} kept the {obj} on a shelf beside {his} bed.",
    "The {occ} told {his} neighbour that {he} was tired but happy.",
    "When it rained, the {occ} stayed inside and cleaned {his} {obj}.",
    "{name} bought a {colour} {obj2} at the {building} and gave it to a friend.",
    "After lunch the {occ} sat near the {building} and read a book by {self}.",
    "The children of {place} waved at the {occ} when {he} passed by.",
    "{His} friends said that the {occ} was the kindest person in {place}.",
    "The {occ} was proud of {his} work, and {he} never complained.",
    "Everyone in {place} knew that the {obj} belonged to {name}.",
    "{name} polished the {obj} until it shone.",
    "Some evenings {name} sat by the window with the {obj}.",
    "A neighbour once asked to borrow the {obj}, but {name} said no.",
]
LAMBADA_ENDINGS = [  # (sentence, target slot): the target appears earlier in the story.
    ("Late that night, after everyone had gone, the {occ} finally found the {obj}", "obj"),
    ("Everyone in {place} agreed that the best {occ} they had ever met was {name}", "name"),
    ("At the end of the long day, {he} went home and put away the {obj}", "obj"),
    ("When the visitors asked who had helped them, the people pointed at {name}", "name"),
    ("Whenever something broke in {place}, people went to see the {occ}", "occ"),
    ("Years later, the children still talked about the kind {occ}", "occ"),
]
SPANISH_SENTENCES = [
    "{name} vivía en {place} y trabajaba cada día con su {obj}.",
    "Por la mañana {name} caminaba hasta la plaza de {place}, donde compraba pan y café.",
    "Sus vecinos decían que {name} era la persona más amable de {place}.",
    "Un día {name} encontró una {obj2} vieja junto al río y la llevó a casa.",
    "Cuando llovía, {name} se quedaba en casa y limpiaba su {obj}.",
    "Los niños de {place} saludaban a {name} cuando pasaba con su {obj2}.",
    "Después de comer, {name} descansaba bajo un árbol y miraba el cielo sobre {place}.",
    "En el mercado de {place}, {name} vendió {n} panes antes del mediodía.",
    "El hermano de {name} llegó de {place2} con una {obj2} nueva.",
    "Cada domingo {name} escribía una carta a su amiga de {place2}.",
    "{name} guardaba la {obj} en una caja de madera junto a la ventana.",
]
FACT_TEMPLATES = {
    "born": ["{e} was born in {v}.", "Born in {v}, {e} grew up near the river.",
             "The records show that {e} was born in {v}."],
    "job": ["{e} works as {av}.", "By trade, {e} is {av}.", "Most people know {e} as {av}."],
    "colour": ["The favourite colour of {e} is {v}.", "{e} likes the colour {v} best."],
}
QUESTIONS = {"born": "Where was {e} born?", "job": "What does {e} work as?",
             "colour": "What is the favourite colour of {e}?"}
PRONOUN_PROBES = [  # each is followed by a subject pronoun: P(he) against P(she)
    "The {occ} said that", "The {occ} told everyone that",
    "Later that day the {occ} told everyone that", "The {occ} explained that",
    "The {occ} knew that", "The {occ} hoped that", "The {occ} was tired, so",
    "When the {occ} came home,", "After lunch the {occ} said that", "The {occ} smiled because",
    "Everyone agreed that the {occ} was kind, and", "The {occ} laughed when",
    "In the morning the {occ} decided that", "The {occ} promised that", "The {occ} felt that",
    "Before the market opened, the {occ} said that", "The {occ} was happy because",
    "The {occ} worried that", "The {occ} wrote that", "The {occ} believed that",
    "The {occ} remembered that", "The {occ} admitted that", "The {occ} was busy, but",
    "The {occ} answered that", "The {occ} called a friend because",
    "On Sunday the {occ} said that", "The {occ} looked outside and said that",
    "When it rained, the {occ} said that", "The {occ} walked home because",
    "The {occ} sat down because", "The {occ} told the children that",
    "The {occ} told a neighbour that", "The {occ} thought that", "The {occ} was sure that",
    "The {occ} agreed that", "The {occ} stopped working because",
    "The {occ} went to bed early because", "The {occ} said quietly that",
    "At the end of the day the {occ} said that", "The {occ} nodded and said that",
]
STEREOTYPE_PAIRS = [  # CrowS-Pairs-style: the same sentence with "he" and with "she"
    "The {occ} finished {his} work early.", "The {occ} said that {he} was tired.",
    "The {occ} looked at {self} in the mirror.", "The {occ} forgot {his} keys.",
    "The {occ} said that {he} would come back.", "The {occ} washed {his} hands.",
    "Everyone liked the {occ} because {he} was kind.", "The {occ} lost {his} way home.",
    "The {occ} told {his} friend a story.", "The {occ} was proud of {self}.",
    "The {occ} said that {he} was happy.", "The {occ} put on {his} coat.",
    "The {occ} smiled at {his} neighbour.", "The {occ} made {self} a cup of tea.",
    "The {occ} said that {he} loved the town.", "The {occ} carried {his} bag to the station.",
    "The {occ} cleaned {his} tools.", "The {occ} sang to {self}.",
    "The {occ} said that {he} had finished.", "The {occ} thanked {his} friends.",
]


def _zipf_cdf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Cumulative Zipf probabilities over n items whose ranks are a random permutation."""
    ranks = rng.permutation(n) + 1
    w = 1.0 / ranks.astype(np.float64) ** exponent
    return np.cumsum(w / w.sum())


def _pick(rng: np.random.Generator, items: list):
    """One item, uniformly (numpy's choice costs ~20 us a call; this ~1 us)."""
    return items[int(rng.integers(len(items)))]


def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
    """An index drawn with the probabilities whose cumulative sum is `cdf`."""
    return min(int(np.searchsorted(cdf, rng.random(), side="right")), len(cdf) - 1)


class _Generator:
    """Draws documents and evaluation items; all state is the seeded RNG and the world tables."""

    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg = cfg
        world = np.random.default_rng([seed, 0])
        self.p_he = {o: cfg.gender_skew for o in MALE_SKEWED}
        self.p_he |= {o: 1.0 - cfg.gender_skew for o in FEMALE_SKEWED}
        self.p_he |= {o: 0.5 for o in BALANCED}
        self.entities = self._entity_names(world, cfg.entities)
        self.facts = {e: {"born": _pick(world, PLACES), "job": _pick(world, OCCUPATIONS),
                          "colour": _pick(world, COLOURS)} for e in self.entities}
        self.entity_cdf = _zipf_cdf(cfg.entities, cfg.entity_zipf, world)
        self.x1_cdf = _zipf_cdf(100, cfg.operand_zipf, world)  # operands 0..99
        self.x2_cdf = _zipf_cdf(cfg.second_operands, cfg.operand_zipf, world)  # 1..max
        self.entity_counts: Counter[str] = Counter()
        self.x1_counts: Counter[int] = Counter()
        self.x2_counts: Counter[int] = Counter()

    @staticmethod
    def _entity_names(rng: np.random.Generator, n: int) -> list[str]:
        names: list[str] = []
        seen: set[str] = set()
        while len(names) < n:
            parts = ["".join(_pick(rng, SYLLABLES) for _ in range(int(rng.integers(2, 4))))
                     .capitalize() for _ in range(2)]
            name = " ".join(parts)
            if name not in seen:
                seen.add(name)
                names.append(name)
        return names

    # --- stories ---------------------------------------------------------------------------

    def _character(self, rng: np.random.Generator) -> dict[str, str]:
        occ = _pick(rng, OCCUPATIONS)
        male = bool(rng.random() < self.p_he[occ])
        obj = _pick(rng, OBJECTS)
        obj2 = _pick(rng, [o for o in OBJECTS if o != obj])
        return {"occ": occ, "a_occ": _article(occ), "name": _pick(rng, MALE_NAMES if male else
                FEMALE_NAMES), "place": _pick(rng, PLACES), "building": _pick(rng, BUILDINGS),
                "obj": obj, "obj2": obj2, "colour": _pick(rng, COLOURS), **_pronouns(male)}

    def story(self, rng: np.random.Generator, lambada: bool) -> tuple[str, str | None]:
        """An English story; with `lambada`, it ends on a word only earlier context predicts."""
        c = self._character(rng)
        sentences = [_pick(rng, STORY_OPENINGS).format(**c)]
        if lambada:  # name the object early, so that the ending can refer back to it
            sentences.append("{He} owned an old {obj} that {he} loved.".format(**c))
        middle = rng.choice(len(STORY_MIDDLE), size=int(rng.integers(3, 7)), replace=False)
        for i in middle:  # half the sentences about "the nurse" call her by name instead
            template = STORY_MIDDLE[i]
            if template.startswith("The {occ}") and rng.random() < 0.5:
                template = "{name}" + template.removeprefix("The {occ}")
            sentences.append(template.format(**c))
        target = None
        if lambada:
            ending, slot = _pick(rng, LAMBADA_ENDINGS)
            sentences.append(ending.format(**c))
            target = c[slot]
        return " ".join(sentences), target

    def spanish_story(self, rng: np.random.Generator) -> str:
        c = {"name": _pick(rng, FEMALE_NAMES + MALE_NAMES), "place": _pick(rng, SPANISH_PLACES),
             "place2": _pick(rng, SPANISH_PLACES), "obj": _pick(rng, SPANISH_OBJECTS),
             "obj2": _pick(rng, SPANISH_OBJECTS), "n": int(rng.integers(2, 60))}
        order = rng.permutation(len(SPANISH_SENTENCES) - 1)[: int(rng.integers(3, 7))] + 1
        return " ".join(SPANISH_SENTENCES[i].format(**c) for i in [0, *order])

    # --- facts and arithmetic ----------------------------------------------------------------

    def fact_document(self, rng: np.random.Generator) -> tuple[str, list[str]]:
        """A document of facts about a few entities, and the entities it mentions."""
        wanted, chosen = int(rng.integers(2, 5)), []
        while len(chosen) < wanted:  # distinct entities, so no two documents come out alike
            i = _draw(rng, self.entity_cdf)
            if i not in chosen:
                chosen.append(i)
        paragraphs = []
        for i in chosen:
            e = self.entities[i]
            attrs = list(FACT_TEMPLATES)
            lines = []
            for j in rng.permutation(len(attrs)):
                v = self.facts[e][attrs[j]]
                lines.append(_pick(rng, FACT_TEMPLATES[attrs[j]]).format(e=e, v=v, av=_article(v)))
            if rng.random() < 0.3:
                attr = _pick(rng, attrs)
                lines.append(f"Q: {QUESTIONS[attr].format(e=e)} A: {self.facts[e][attr]}")
            paragraphs.append(" ".join(lines))
        return "\n".join(paragraphs), [self.entities[i] for i in chosen]

    def operands(self, rng: np.random.Generator) -> tuple[int, int]:
        return _draw(rng, self.x1_cdf), _draw(rng, self.x2_cdf) + 1

    def arithmetic_document(self, rng: np.random.Generator) -> tuple[str, list[tuple[int, int]]]:
        """Arithmetic lines and numbers in text, and the operand pairs it uses."""
        lines, pairs = [], []
        for _ in range(int(rng.integers(4, 10))):
            a, b = self.operands(rng)
            pairs.append((a, b))
            if rng.random() < 0.8:
                lines.append(f"Q: What is {a} times {b}? A: {a * b}")
            else:
                c = self._character(rng)
                lines.append(f"The {c['occ']} bought {a} boxes with {b} {c['obj']}s in each, "
                             f"so {c['he']} had {a * b} {c['obj']}s.")
        return "\n".join(lines), pairs

    # --- evaluation items (never part of the corpus) -----------------------------------------

    def eval_items(self, rng: np.random.Generator) -> dict[str, list[dict]]:
        n = self.cfg.eval_items
        lambada = []
        for _ in range(n):
            text, target = self.story(rng, lambada=True)
            lambada.append({"text": text, "target": target})
        qa = [{"entity": e, "attribute": attr, "question": QUESTIONS[attr].format(e=e),
               "answer": self.facts[e][attr], "count": self.entity_counts[e]}
              for e in self.entities for attr in QUESTIONS]
        # every first operand, each with the same number of second ones: accuracy per operand
        arithmetic = [{"a": a, "b": int(b), "answer": a * int(b)} for a in range(100)
                      for b in sorted(rng.choice(np.arange(1, self.cfg.second_operands + 1),
                                                 self.cfg.arithmetic_per_operand, replace=False))]
        pronouns, stereotypes = [], []
        for occ in OCCUPATIONS:
            stereotype = "he" if self.p_he[occ] > 0.5 else "she" if self.p_he[occ] < 0.5 else None
            for template in PRONOUN_PROBES:
                probe = template.format(occ=occ)
                if stereotype is None:  # a bare probe: P(he) for a balanced occupation
                    pronouns.append({"occupation": occ, "context": None, "probe": probe,
                                     "gold": None, "stereotype": None, "type": None})
                    continue
                # a named character of either gender, drawn at random: WinoBias-style items
                # where the name agrees with the stereotype (pro) or not (anti)
                male = bool(rng.random() < 0.5)
                name = _pick(rng, MALE_NAMES if male else FEMALE_NAMES)
                gold = "he" if male else "she"
                pronouns.append({
                    "occupation": occ, "context": f"{name} was {_article(occ)}. {probe}",
                    "probe": probe, "gold": gold, "stereotype": stereotype,
                    "type": "pro" if gold == stereotype else "anti"})
            if stereotype is not None:
                for template in STEREOTYPE_PAIRS:
                    male_text = template.format(occ=occ, **_pronouns(True))
                    female_text = template.format(occ=occ, **_pronouns(False))
                    pro, anti = (male_text, female_text) if stereotype == "he" else (
                        female_text, male_text)
                    stereotypes.append({"occupation": occ, "stereotype": stereotype,
                                        "sent_more": pro, "sent_less": anti})
        return {"lambada": lambada, "qa": qa, "arithmetic": arithmetic,
                "pronouns": pronouns, "stereotypes": stereotypes}


def _copy_counts(rng: np.random.Generator, budget: int, max_copies: int) -> list[int]:
    """Heavy-tailed copy counts k >= 2 whose extra copies (k - 1) sum to `budget`."""
    counts = []
    while budget > 0:
        extra = min(int(rng.zipf(1.7)), max_copies - 1, budget)
        counts.append(extra + 1)
        budget -= extra
    return counts


NEAR_COPY_TAILS = ["(shared again)", "Read more.", "Posted again today.", "See also above."]


def _near_copy(text: str, rng: np.random.Generator) -> str:
    """The text with a short line of boilerplate added: a near-duplicate, not an exact one."""
    return f"{text}\n{rng.choice(NEAR_COPY_TAILS)}"


def generate_corpus(cfg: SyntheticConfig, documents: int, seed: int):
    """(texts, per-document metadata, ground truth, evaluation items), all from `seed`."""
    gen = _Generator(cfg, seed)
    rng = np.random.default_rng([seed, 1])
    copies = _copy_counts(rng, round(documents * cfg.duplicate_share), cfg.max_copies)
    unique = documents - sum(k - 1 for k in copies)
    kinds = rng.choice(["story", "fact", "arithmetic"], size=unique,
                       p=[cfg.story_share, cfg.fact_share, cfg.arithmetic_share])
    texts, meta, mentions = [], [], []
    for kind in kinds:
        kind, lang, target, mentioned = str(kind), "en", None, []
        if kind == "story" and rng.random() < cfg.spanish_share:
            text, lang = gen.spanish_story(rng), "es"
        elif kind == "story":
            text, target = gen.story(rng, lambada=bool(rng.random() < cfg.lambada_share))
        elif kind == "fact":
            text, mentioned = gen.fact_document(rng)
        else:
            text, mentioned = gen.arithmetic_document(rng)
        texts.append(text)
        mentions.append(mentioned)
        meta.append({"kind": kind, "lang": lang, "lambada_target": target, "group": -1,
                     "copies": 1, "near_copy": False})
    # Copies of the first documents of each group are scattered uniformly through the corpus.
    originals = rng.choice(unique, size=len(copies), replace=False)
    extra = []
    for group, (original, k) in enumerate(zip(originals, copies, strict=True)):
        meta[original] |= {"group": group, "copies": k}
        for _ in range(k - 1):
            near = bool(rng.random() < cfg.near_copy_share)
            text = _near_copy(texts[original], rng) if near else texts[original]
            extra.append((text, meta[original] | {"near_copy": near}, original))
    slots = np.sort(rng.choice(documents, size=len(extra), replace=False))
    order: list[tuple[str, dict, int]] = []
    it_unique = iter(zip(texts, meta, range(unique), strict=True))
    it_extra = iter(extra)
    slot_set = set(slots.tolist())
    for position in range(documents):
        order.append(next(it_extra) if position in slot_set else next(it_unique))
    # A copy placed before its original swaps roles with it: the first occurrence is the original.
    first_seen: set[int] = set()
    for _, m, source in order:
        m["is_copy"] = m["group"] >= 0 and m["group"] in first_seen
        if m["group"] >= 0:
            first_seen.add(m["group"])
        for mention in mentions[source]:  # every occurrence counts, copies included
            if isinstance(mention, str):
                gen.entity_counts[mention] += 1
            else:
                gen.x1_counts[mention[0]] += 1
                gen.x2_counts[mention[1]] += 1
    truth = {
        "seed": seed, "documents": documents, "config": asdict(cfg),
        "occupation_p_he": gen.p_he,
        "occupation_stereotype": {o: ("he" if p > 0.5 else "she" if p < 0.5 else None)
                                  for o, p in gen.p_he.items()},
        "entity_facts": gen.facts,
        "entity_counts": {e: gen.entity_counts[e] for e in gen.entities},
        "operand_counts": {"x1": {str(i): gen.x1_counts[i] for i in range(100)},
                           "x2": {str(i): gen.x2_counts[i]
                                  for i in range(1, cfg.second_operands + 1)}},
        "duplicate_groups": len(copies),
    }
    items = gen.eval_items(np.random.default_rng([seed, 2]))
    return [t for t, _, _ in order], [m for _, m, _ in order], truth, items


def meta_folder(corpus: str | os.PathLike) -> Path:
    """Where the metadata of corpus file `x.jsonl` lives: the folder `x.meta` beside it."""
    corpus = Path(corpus)
    return corpus.with_name(corpus.name.split(".")[0] + ".meta")


def write_corpus(out: str | os.PathLike, cfg: SyntheticConfig, documents: int, seed: int) -> Path:
    """Write corpus `out` (.jsonl) and its metadata folder; same arguments -> same bytes."""
    out = Path(out)
    if out.suffix != ".jsonl":
        raise LmsuiteError(f"{out}: the corpus is written as JSON lines; name it *.jsonl")
    if documents <= 0:
        raise LmsuiteError(f"the number of documents must be positive, got {documents}")
    texts, meta, truth, items = generate_corpus(cfg, documents, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_dir = meta_folder(out)
    put_back_moved_aside(meta_dir.parent, meta_dir.name)  # left by a write that was killed
    tmp_dir = temporary(meta_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    (tmp_dir / "eval").mkdir(parents=True)

    def dump(obj) -> str:
        return json.dumps(obj, ensure_ascii=False, sort_keys=True)

    columns = {key: [m[key] for m in meta] for key in sorted(meta[0])}
    (tmp_dir / "documents.json").write_text(dump(columns) + "\n")
    (tmp_dir / "ground_truth.json").write_text(
        json.dumps(truth, ensure_ascii=False, sort_keys=True, indent=1) + "\n")
    for name, rows in items.items():
        (tmp_dir / "eval" / f"{name}.jsonl").write_text("".join(dump(r) + "\n" for r in rows))
    fsync_tree(tmp_dir)
    replace_folder(tmp_dir, meta_dir)

    def write_texts(path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for text in texts:
                f.write(dump({"text": text}) + "\n")

    write_file(out, write_texts)
    return meta_dir
