r"""A small synthetic rating dataset in the input format of data/README.md, for the tests.

    python tests/synthetic_data.py --out_root /tmp/synthetic     # writes /tmp/synthetic/Movies/

Writes `<out_root>/<category>/{train,valid,test,history}.jsonl.gz`. Deterministic (same seed, same
bytes), pure Python, no model, well under a second. It imitates what the stages rely on in the
real Movies files:

- 40 users, a few hundred items in 12 genres whose titles share genre words, so MiniLM embeddings of
  the item texts cluster and K-means with K up to 20 finds topics;
- item texts "Title, cat1|cat2|..." with Amazon-like category paths (subjects such as "Horror" and
  store shelves such as "Featured Categories"); some titles hold commas, a few non-ASCII letters;
  no item text is a substring of another's;
- ratings skewed to 5 (each user likes two genres and dislikes one or two), so the liked/disliked
  rules have something to find and can disagree;
- per user, interactions oldest first: the first three are history only, each later one up to the
  last two is a train row whose `history` is every earlier interaction ("x.0" ratings, as in the
  real train file), then a valid and a test row sharing the user's whole history (integer ratings,
  the same text as history.jsonl.gz); history.jsonl.gz holds every interaction except the valid and
  test targets;
- users with no history at all and users with no train row (cold users at test time), and valid
  and test targets that occur nowhere else (cold items).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
from pathlib import Path

GENRES = {
    # genre: (subject categories after "Movies & TV", title words)
    "Science Fiction": (["Science Fiction & Fantasy", "Science Fiction"],
                        "Galaxy Starship Nebula Orbit Android Comet Asteroid Cosmos Rocket Planet Lunar Quasar"),
    "Horror": (["Genre for Featured Categories", "Horror"],
               "Haunting Crypt Shadow Curse Phantom Zombie Vampire Ritual Asylum Cellar Witch Nightmare"),
    "Comedy": (["Genre for Featured Categories", "Comedy"],
               "Wedding Roommate Vacation Prank Bachelor Neighbor Slacker Reunion Karaoke Mixup Sitcom Blunder"),
    "Romance": (["Featured Categories", "DVD", "Romance"],
                "Love Heart Kiss Paris Café Letter Summer Promise Valentine Soirée Bride Sweetheart"),
    "Westerns": (["Featured Categories", "DVD", "Westerns"],
                 "Outlaw Sheriff Canyon Frontier Saloon Gunslinger Ranch Stagecoach Mesa Bandit Rider Prairie"),
    "War": (["Genre for Featured Categories", "Military & War"],
            "Battalion Trench Beachhead Platoon Submarine Bomber Infantry Siege Armistice Sniper Regiment Frontline"),
    "Kids & Family": (["Featured Categories", "DVD", "Kids & Family"],
                      "Puppy Dragon Princess Treehouse Bunny Pirate Teddy Unicorn Dinosaur Kitten Robot Balloon"),
    "Documentary": (["Documentary", "Nature & Wildlife"],
                    "Ocean Rainforest Glacier Savanna Whale Coral Volcano Desert Migration Eagle Wildlife Reef"),
    "Crime": (["Genre for Featured Categories", "Mystery & Suspense"],
              "Heist Detective Alibi Mob Cartel Informant Verdict Ransom Getaway Syndicate Homicide Fugitive"),
    "Sports": (["Sports", "Football"],
               "Quarterback Stadium Champion Rookie Playoff Coach Boxer Marathon Knockout Pitcher Touchdown Olympian"),
    "Musicals": (["Musicals & Performing Arts"],
                 "Melody Ballet Encore Rhapsody Chorus Serenade Tango Symphony Señorita Cabaret Overture Jazz"),
    "Fantasy": (["Science Fiction & Fantasy", "Fantasy"],
                "Wizard Sorcerer Kingdom Elven Dragonstone Enchanted Quest Amulet Throne Goblin Spellbound Realm"),
}
# Store navigation instead of a subject, as on many real items.
SHELVES = [
    ["Studio Specials", "Sony Pictures Home Entertainment", "All Sony Pictures Titles"],
    ["Blu-ray", "Movies"],
    ["Studio Specials", "Warner Home Video", "All Titles"],
    ["Fully Loaded DVDs", "Special Editions"],
    ["Featured Categories", "Blu-ray"],
]
ADJECTIVES = "Dark Last Silent Golden Broken Wild Hidden Lost Eternal Crimson Final Secret".split()
EDITIONS = ["[Blu-ray]", "(Special Edition)", "[DVD]", "(4K Ultra HD)"]
SEQUELS = ["II", "III", "Returns"]

ITEMS_PER_GENRE = 26
COLD_ITEMS = 16  # only ever a valid or test target
HISTORY_ONLY = 3  # the first interactions of a user are never train targets (as in the real data)
RATINGS = (1, 2, 3, 4, 5)
LIKED_WEIGHTS = (0.0, 0.03, 0.07, 0.15, 0.75)
DISLIKED_WEIGHTS = (0.3, 0.3, 0.2, 0.1, 0.1)
NEUTRAL_WEIGHTS = (0.05, 0.1, 0.18, 0.17, 0.5)


def _code(prefix: str, name: str, length: int) -> str:
    """A stable id in the style of Amazon ids (hash of a name, upper case)."""
    return prefix + hashlib.sha1(name.encode()).hexdigest().upper()[: length - len(prefix)]


def _title(rng: random.Random, words: list[str]) -> str:
    a, b, c = rng.sample(words, 3)
    pattern = rng.randrange(8)
    if pattern == 0:
        return f"The {a} of the {b}"
    if pattern == 1:
        return f"{a}, {b} and {c}"  # a title with a comma
    if pattern == 2:
        return f"{a} {b} {rng.choice(SEQUELS)}"
    if pattern == 3:
        return f"{a} {b} {rng.choice(EDITIONS)}"
    if pattern == 4:
        return f"{a}: {rng.choice(ADJECTIVES)} {b}"
    if pattern == 5:
        return f"{rng.choice(ADJECTIVES)} {a}, {rng.choice(ADJECTIVES)} {b}"  # another comma
    return f"{rng.choice(ADJECTIVES)} {a} {b}"


def _items(rng: random.Random) -> list[dict]:
    """Every item: id, genre, title, categories, text; no text is a substring of another."""
    items: list[dict] = []
    texts: list[str] = []
    for genre, (subjects, words) in GENRES.items():
        made = 0
        while made < ITEMS_PER_GENRE:
            title = _title(rng, words.split())
            path = ["Movies & TV", *(subjects if rng.random() < 0.75 else rng.choice(SHELVES))]
            text = f"{title}, {'|'.join(path)}"
            # History lines are searched for inside prompts: an item whose text holds another's
            # would make "this line is (not) in the prompt" ambiguous.
            if any(text in other or other in text for other in texts):
                continue
            texts.append(text)
            items.append({"item_id": _code("B0", f"item-{len(items)}", 10), "genre": genre, "title": title,
                          "categories": "|".join(path), "text": text})
            made += 1
    return items


def _history_lengths(rng: random.Random, n_users: int) -> list[int]:
    """Interactions in history.jsonl.gz per user: two users with none, a few with no train row,
    most with 4-20, a few long ones (the real data has users with 70+)."""
    lengths = [0, 0, 1, 2, 3, 3]
    lengths += [rng.randint(30, 40) for _ in range(3)]
    lengths += [min(4 + int(rng.expovariate(1 / 7)), 25) for _ in range(n_users - len(lengths))]
    rng.shuffle(lengths)
    return lengths[:n_users]


def _line(item: dict, rating: int, as_float: bool) -> str:
    return f"{item['text']}, {float(rating) if as_float else rating}"


def synthetic_rows(n_users: int = 40, seed: int = 0) -> dict[str, list[dict]]:
    """The four files' rows: {"history": [...], "train": [...], "valid": [...], "test": [...]}."""
    rng = random.Random(seed)
    items = _items(rng)
    rng.shuffle(items)
    cold, warm = items[:COLD_ITEMS], items[COLD_ITEMS:]
    # A long-tailed popularity (a few items most users rate, many rated once or twice).
    popularity = [1.0 / (1 + rank) ** 0.6 for rank in range(len(warm))]
    by_genre: dict[str, list[int]] = {}
    for index, item in enumerate(warm):
        by_genre.setdefault(item["genre"], []).append(index)
    genres = list(GENRES)

    rows: dict[str, list[dict]] = {"history": [], "train": [], "valid": [], "test": []}
    for user_number, n_history in enumerate(_history_lengths(rng, n_users)):
        user_id = _code("A", f"user-{user_number}", 28)
        liked = rng.sample(genres, 2)
        disliked = rng.sample([g for g in genres if g not in liked], rng.choice((1, 2)))

        def pick(taken: set[int], liked=liked, disliked=disliked) -> int:
            roll = rng.random()
            pool_genres = liked if roll < 0.55 else disliked if roll < 0.7 else genres
            pool = [i for g in pool_genres for i in by_genre[g] if i not in taken]
            return rng.choices(pool, weights=[popularity[i] for i in pool])[0]

        def rate(item: dict, liked=liked, disliked=disliked) -> int:
            weights = LIKED_WEIGHTS if item["genre"] in liked else DISLIKED_WEIGHTS if item["genre"] in disliked \
                else NEUTRAL_WEIGHTS
            return rng.choices(RATINGS, weights=weights)[0]

        taken: set[int] = set()
        sequence = []
        for _ in range(n_history + 2):
            index = pick(taken)
            taken.add(index)
            sequence.append(warm[index])
        # Cold items: some valid/test targets occur nowhere else.
        for position, item in zip((n_history, n_history + 1), rng.sample(cold, 2), strict=True):
            if rng.random() < 0.2:
                sequence[position] = item
        ratings = [rate(item) for item in sequence]
        time = 1_400_000_000_000 + user_number * 7_000_000_000 + rng.randrange(10**9)
        timestamps = []
        for _ in sequence:
            time += rng.randrange(60_000, 40 * 86_400_000)
            timestamps.append(time)

        history_text = "\n".join(_line(item, r, False) for item, r in zip(sequence[:n_history], ratings, strict=False))
        rows["history"].append({"user_id": user_id, "history": history_text,
                                "history_asins": [item["item_id"] for item in sequence[:n_history]],
                                "history_ratings": ratings[:n_history]})
        for position in range(HISTORY_ONLY, n_history):
            rows["train"].append(_split_row(user_id, sequence[position], ratings[position], timestamps[position],
                                            "\n".join(_line(item, r, True) for item, r in
                                                      zip(sequence[:position], ratings, strict=False))))
        for split, position in (("valid", n_history), ("test", n_history + 1)):
            rows[split].append(_split_row(user_id, sequence[position], ratings[position], timestamps[position],
                                          history_text))
    return rows


def _split_row(user_id: str, item: dict, rating: int, timestamp: int, history: str) -> dict:
    return {"user_id": user_id, "parent_asin": item["item_id"], "timestamp": timestamp, "label": float(rating),
            "target": item["text"], "history": history}


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    buffer = io.BytesIO()
    # mtime=0: the same rows give the same bytes, so file sizes and hashes in manifests repeat.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def write_synthetic_category(category_dir: str | Path, n_users: int = 40, seed: int = 0) -> dict[str, int]:
    """Write the four files into `category_dir` (created); returns the row count of each."""
    category_dir = Path(category_dir)
    category_dir.mkdir(parents=True, exist_ok=True)
    rows = synthetic_rows(n_users, seed)
    for name, file_rows in rows.items():
        _write_jsonl_gz(category_dir / f"{name}.jsonl.gz", file_rows)
    return {name: len(file_rows) for name, file_rows in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_root", required=True, help="writes <out_root>/<category>/")
    parser.add_argument("--category", default="Movies", help="category folder name")
    parser.add_argument("--num_users", type=int, default=40, help="users")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    counts = write_synthetic_category(Path(args.out_root) / args.category, args.num_users, args.seed)
    print(f"wrote {Path(args.out_root) / args.category}: " + ", ".join(f"{k} {v} rows" for k, v in counts.items()))


if __name__ == "__main__":
    main()
