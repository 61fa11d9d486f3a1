"""The words the seeded generators pick from: first names, cities, jobs, pets, foods, topics, months.

One home for the vocabularies of :mod:`memfactory.data.synth` (hotpotqa, docqa) and
:mod:`memfactory.data.synth_locomo`. Where the two generators pick from different lists of the same
kind (docqa's real cities, LoCoMo's invented ones) both lists live here side by side, named for
their generator: a list's members *and their order* are part of what a generator writes for a
seed (``rng.choice`` / ``rng.sample`` pick by position), and the shipped sets in ``assets/data``
and the tests depend on that output byte for byte. Add a new list rather than edit one in place.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- people

# docqa's people (real first names)
DOCQA_FIRST_NAMES = [
    "Alice",
    "Bob",
    "Carol",
    "David",
    "Emma",
    "Frank",
    "Grace",
    "Henry",
    "Irene",
    "Jack",
    "Kate",
    "Liam",
    "Maria",
    "Noah",
    "Olivia",
    "Peter",
    "Rosa",
    "Sam",
    "Tina",
    "Victor",
    "Wendy",
    "Yusuf",
    "Zoe",
    "Omar",
]
# the two speakers of a synthetic LoCoMo conversation
LOCOMO_FIRST_NAMES = [
    "Ava",
    "Ben",
    "Cleo",
    "Dario",
    "Esme",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonah",
    "Kira",
    "Luca",
    "Mira",
    "Nils",
    "Orla",
    "Pavel",
    "Rosa",
    "Soren",
    "Tess",
    "Ugo",
    "Vera",
    "Wren",
    "Yusuf",
    "Zoe",
]

# hotpotqa's invented names are built from syllables (onset + vowel + coda), so no fact can come
# from a model's world knowledge
NAME_ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "w",
    "z",
]
NAME_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou"]
NAME_CODAS = ["", "n", "r", "l", "s", "th", "nd", "rk", "m", "x"]  # "": a syllable may end on its vowel
ORG_KINDS = ["Dynamics", "Works", "Institute", "Holdings", "Laboratories", "Press", "Guild", "Foundry"]

# --------------------------------------------------------------------------- places

DOCQA_CITIES = [
    "Paris",
    "Tokyo",
    "Cairo",
    "Lima",
    "Oslo",
    "Rome",
    "Berlin",
    "Madrid",
    "Sydney",
    "Toronto",
    "Dublin",
    "Vienna",
    "Lisbon",
    "Prague",
    "Seoul",
    "Nairobi",
    "Athens",
    "Boston",
    "Denver",
    "Warsaw",
]
# invented, so a model cannot answer "where does X live now" from world knowledge
LOCOMO_CITIES = [
    "Tholand",
    "Brevik",
    "Maraston",
    "Quillan",
    "Dunmere",
    "Caldor",
    "Ostrava",
    "Pelham",
    "Vinterby",
    "Larkhaven",
    "Rosmoor",
    "Ashby",
]
LANDMARKS = [
    "an old stone bridge",
    "a covered market",
    "a lighthouse",
    "a cathedral",
    "a botanical garden",
    "a harbour fortress",
    "a clock tower",
    "a public library",
]

# --------------------------------------------------------------------------- work

DOCQA_JOBS = [
    "teacher",
    "doctor",
    "pilot",
    "baker",
    "lawyer",
    "nurse",
    "farmer",
    "painter",
    "chef",
    "dentist",
    "writer",
    "plumber",
]
LOCOMO_JOBS = ["nurse", "architect", "baker", "pilot", "teacher", "librarian", "carpenter", "chemist"]
# hotpotqa's people and companies
PROFESSIONS = [
    "architect",
    "botanist",
    "cartographer",
    "chemist",
    "composer",
    "engineer",
    "historian",
    "journalist",
    "linguist",
    "mathematician",
    "novelist",
    "painter",
    "physician",
    "sculptor",
    "surveyor",
    "astronomer",
]
INDUSTRIES = [
    "shipbuilding",
    "textile",
    "publishing",
    "software",
    "mining",
    "aviation",
    "brewing",
    "glassmaking",
    "railway",
    "pharmaceutical",
    "instrument-making",
    "farming",
]
TOPICS = [
    "tidal energy",
    "medieval trade routes",
    "alpine flora",
    "choral music",
    "bridge design",
    "folk songs",
    "coastal erosion",
    "early printing",
    "weather records",
    "clockwork",
    "migratory birds",
    "ceramics",
]

# --------------------------------------------------------------------------- pets, tastes, pastimes

PETS = ["dog", "cat", "parrot", "rabbit", "horse", "turtle", "goat", "hamster"]
LOCOMO_PETS = PETS[:4]  # the household ones: dog, cat, parrot, rabbit
PET_NAMES = ["Biscuit", "Pepper", "Mango", "Ziggy", "Nova", "Toffee", "Luna", "Rocket", "Juno", "Olive"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]
FOODS = ["dumplings", "lasagna", "sushi", "tacos", "curry", "paella", "ramen", "falafel", "risotto", "pho"]
HOBBIES = ["pottery", "climbing", "chess", "gardening", "rowing", "knitting", "archery", "birdwatching"]

# --------------------------------------------------------------------------- time

# English month names, independent of the machine's locale (unlike calendar.month_name)
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
