"""Fine -> coarse label tables of the datasets in the MaskCon paper.

Everything here is plain Python and numpy: the tables can be inspected and
tested without TensorFlow. The loaders in `maskcon_jax.datasets` turn them into
`LabelHierarchy` objects and per-example labels.

* Fashion-MNIST: two groupings of the 10 classes (`FASHION_MNIST_GROUPINGS`),
  the natural one (tops, footwear, other) and a deliberately misleading one.
* CIFAR-100: the dataset's own 20 superclasses.
* CIFARtoy: 8 CIFAR-10 classes in two coarse groups, a "good" grouping that
  follows appearance (vehicles vs animals) and a "bad" one that cuts across it.
* Cars196: 8 body types derived from the 196 class names by `cars196_body_type`.
* ImageNet32: 12 groups from the official tables shipped in
  ``maskcon_jax/data/coarse_labels/imagenet32``.
* Stanford Online Products: the 12 super-categories; the paper's two splits
  come from ``maskcon_jax/data/coarse_labels/sop_split{1,2}``.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Sequence

import numpy as np

# ---------------------------------------------------------------------------
# Normalisation statistics of the images scaled to [0, 1].
# ---------------------------------------------------------------------------

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.507, 0.487, 0.441)
CIFAR100_STD = (0.267, 0.256, 0.276)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------
# Fashion-MNIST.
# ---------------------------------------------------------------------------

FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Coarse groupings of the 10 Fashion-MNIST classes: grouping -> the coarse
# classes in id order, each as (name, member classes).
#
# * ``natural`` (dataset ``fashion_mnist``): tops, footwear and the rest.
# * ``mixed`` (dataset ``fashion_mnist_mixed``): a misleading grouping. Each
#   coarse class holds part of every natural group (tops, footwear, other),
#   and the visually close pairs T-shirt/Shirt, Pullover/Coat and
#   Sandal/Sneaker are split across the two, so the coarse labels say little
#   about appearance: the Fashion-MNIST analogue of CIFARtoy's "bad" grouping.
FASHION_MNIST_GROUPINGS = {
    "natural": (
        ("tops", ("T-shirt/top", "Pullover", "Coat", "Shirt")),
        ("footwear", ("Sandal", "Sneaker", "Ankle boot")),
        ("other", ("Trouser", "Dress", "Bag")),
    ),
    "mixed": (
        ("mixed_a", ("T-shirt/top", "Trouser", "Pullover", "Sandal", "Bag")),
        ("mixed_b", ("Dress", "Coat", "Shirt", "Sneaker", "Ankle boot")),
    ),
}


def fashion_mnist_grouping(
    grouping: str,
) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """One of `FASHION_MNIST_GROUPINGS` as label tables.

  Args:
    grouping: ``'natural'`` or ``'mixed'``.

  Returns:
    ``(fine_to_coarse, coarse_names)``: the coarse id of each Fashion-MNIST
    label 0-9, and the coarse class names in id order.

  Raises:
    ValueError: an unknown grouping, or one that does not put every class in
      exactly one coarse class.
  """
  if grouping not in FASHION_MNIST_GROUPINGS:
    raise ValueError(
        f"Fashion-MNIST grouping {grouping!r} is not one of "
        f'{", ".join(FASHION_MNIST_GROUPINGS)}.'
    )
  groups = FASHION_MNIST_GROUPINGS[grouping]
  coarse_of = {}
  for c, (_, members) in enumerate(groups):
    for name in members:
      coarse_of.setdefault(name, []).append(c)
  if sorted(coarse_of) != sorted(FASHION_MNIST_NAMES) or any(
      len(c) != 1 for c in coarse_of.values()
  ):
    raise ValueError(
        f"Fashion-MNIST grouping {grouping!r} must put each of "
        "the 10 classes in exactly one coarse class."
    )
  return (
      tuple(coarse_of[n][0] for n in FASHION_MNIST_NAMES),
      tuple(name for name, _ in groups),
  )


# ---------------------------------------------------------------------------
# CIFAR-10 and CIFARtoy.
# ---------------------------------------------------------------------------

CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Deer (4) and frog (6) are left out of both CIFARtoy variants.
CIFARTOY_DROPPED = (4, 6)
# The kept CIFAR-10 classes in their original order; CIFARtoy fine label f is
# CIFAR-10 class CIFARTOY_CLASSES[f].
CIFARTOY_CLASSES = (0, 1, 2, 3, 5, 7, 8, 9)
CIFARTOY_COARSE_NAMES = {
    "good": ("airplane, automobile, ship, truck", "bird, cat, dog, horse"),
    "bad": ("airplane, automobile, dog, cat", "ship, truck, bird, horse"),
}
# CIFAR-10 classes of coarse group 0; the other kept classes form group 1.
_CIFARTOY_GROUP0 = {
    "good": ("airplane", "automobile", "ship", "truck"),
    "bad": ("airplane", "automobile", "dog", "cat"),
}


def cifartoy_tables(grouping: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-CIFAR-10-class tables of one CIFARtoy grouping.

  The fine labels are the kept classes renumbered 0-7 in their CIFAR-10 order
  (airplane, automobile, bird, cat, dog, horse, ship, truck). The official
  code numbers them in another order; retrieval only compares labels for
  equality, so the numbering does not change any result.

  Args:
    grouping: ``'good'`` or ``'bad'``.

  Returns:
    ``(fine, coarse)``: int32 arrays of length 10 indexed by the CIFAR-10
    label, -1 for the dropped classes (deer, frog).
  """
  if grouping not in _CIFARTOY_GROUP0:
    raise ValueError(f'CIFARtoy grouping {grouping!r} is not "good" or "bad".')
  fine = np.full(10, -1, np.int32)
  coarse = np.full(10, -1, np.int32)
  group0 = {CIFAR10_NAMES.index(n) for n in _CIFARTOY_GROUP0[grouping]}
  for new, old in enumerate(CIFARTOY_CLASSES):
    fine[old] = new
    coarse[old] = 0 if old in group0 else 1
  return fine, coarse


# ---------------------------------------------------------------------------
# CIFAR-100.
# ---------------------------------------------------------------------------

CIFAR100_FINE_NAMES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)

# The 20 superclasses of the CIFAR-100 release, each with its five classes.
_CIFAR100_SUPERCLASSES = (
    ("aquatic_mammals", ("beaver", "dolphin", "otter", "seal", "whale")),
    ("fish", ("aquarium_fish", "flatfish", "ray", "shark", "trout")),
    ("flowers", ("orchid", "poppy", "rose", "sunflower", "tulip")),
    ("food_containers", ("bottle", "bowl", "can", "cup", "plate")),
    (
        "fruit_and_vegetables",
        ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    ),
    (
        "household_electrical_devices",
        ("clock", "keyboard", "lamp", "telephone", "television"),
    ),
    ("household_furniture", ("bed", "chair", "couch", "table", "wardrobe")),
    ("insects", ("bee", "beetle", "butterfly", "caterpillar", "cockroach")),
    ("large_carnivores", ("bear", "leopard", "lion", "tiger", "wolf")),
    (
        "large_man-made_outdoor_things",
        ("bridge", "castle", "house", "road", "skyscraper"),
    ),
    (
        "large_natural_outdoor_scenes",
        ("cloud", "forest", "mountain", "plain", "sea"),
    ),
    (
        "large_omnivores_and_herbivores",
        ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    ),
    ("medium_mammals", ("fox", "porcupine", "possum", "raccoon", "skunk")),
    (
        "non-insect_invertebrates",
        ("crab", "lobster", "snail", "spider", "worm"),
    ),
    ("people", ("baby", "boy", "girl", "man", "woman")),
    ("reptiles", ("crocodile", "dinosaur", "lizard", "snake", "turtle")),
    ("small_mammals", ("hamster", "mouse", "rabbit", "shrew", "squirrel")),
    (
        "trees",
        ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    ),
    ("vehicles_1", ("bicycle", "bus", "motorcycle", "pickup_truck", "train")),
    ("vehicles_2", ("lawn_mower", "rocket", "streetcar", "tank", "tractor")),
)
CIFAR100_COARSE_NAMES = tuple(name for name, _ in _CIFAR100_SUPERCLASSES)


def cifar100_fine_to_coarse() -> tuple[int, ...]:
  """The superclass id of each CIFAR-100 class (both in alphabetical order)."""
  coarse_of = {
      fine: c
      for c, (_, members) in enumerate(_CIFAR100_SUPERCLASSES)
      for fine in members
  }
  return tuple(coarse_of[name] for name in CIFAR100_FINE_NAMES)


# ---------------------------------------------------------------------------
# Cars196.
# ---------------------------------------------------------------------------

CARS196_COARSE_NAMES = (
    "pickup/cab",
    "sedan",
    "SUV",
    "convertible",
    "coupe",
    "hatchback",
    "wagon",
    "van",
)

# Body-type words, matched as whole words of a class name. All the pickups end
# in "<kind> Cab" (Crew, Regular, Extended, Quad, Club Cab), except Ford's
# one-word "SuperCab"; "Cargo Van" and "Passenger Van" end in "Van".
_CARS_BODY_WORDS = {
    "Cab": "pickup/cab",
    "SuperCab": "pickup/cab",
    "Sedan": "sedan",
    "SUV": "SUV",
    "Convertible": "convertible",
    "Coupe": "coupe",
    "Hatchback": "hatchback",
    "Wagon": "wagon",
    "Van": "van",
    "Minivan": "van",
}

# Models whose class name holds no body-type word, with the group the paper's
# coarse labels put them in (the official table was made by hand).
_CARS_MODELS_WITHOUT_BODY_WORD = {
    "Acura TL Type-S": "sedan",
    "Acura Integra Type R": "coupe",
    "Buick Regal GS": "sedan",
    "Chevrolet Corvette ZR1": "convertible",
    "Chevrolet Corvette Ron Fellows Edition Z06": "convertible",
    "Chevrolet HHR SS": "SUV",
    "Chevrolet Cobalt SS": "coupe",
    "Chevrolet TrailBlazer SS": "SUV",
    "Chrysler 300 SRT-8": "sedan",
    "Dodge Challenger SRT8": "coupe",
    "Dodge Charger SRT-8": "sedan",
    "FIAT 500 Abarth": "hatchback",
    "Jaguar XK XKR": "convertible",
    "Lamborghini Gallardo LP 570-4 Superleggera": "convertible",
}

# Group sizes of the paper's Cars196 coarse labels; `cars196_fine_to_coarse`
# checks its result against them.
CARS196_GROUP_SIZES = {
    "pickup/cab": 18,
    "sedan": 50,
    "SUV": 36,
    "convertible": 30,
    "coupe": 29,
    "hatchback": 14,
    "wagon": 6,
    "van": 13,
}


def cars196_body_type(name: str) -> str:
  """The body type (one of `CARS196_COARSE_NAMES`) of a Cars196 class name.

  Rules, in order:

  1. The name without its trailing model year is looked up in a table of the
     14 models whose names hold no body-type word (e.g. "Dodge Challenger
     SRT8" is a coupe, "FIAT 500 Abarth" a hatchback, "Chevrolet HHR SS" an
     SUV, "Jaguar XK XKR" a convertible), as the paper's labels group them.
  2. Otherwise the LAST body-type word of the name decides, because a name
     can hold two and the later one is the body: "Rolls-Royce Phantom
     Drophead Coupe Convertible" is a convertible, "Ford E-Series Wagon Van"
     a van, "Ram C/V Cargo Van Minivan" a van. Words: "Cab" (every "Crew /
     Regular / Extended / Quad / Club Cab") and "SuperCab" -> pickup/cab;
     "Sedan"; "SUV"; "Convertible"; "Coupe" (also "Infiniti G Coupe IPL");
     "Hatchback"; "Wagon"; "Van" (also "Cargo Van", "Passenger Van") and
     "Minivan" -> van. Whole words only, so "Conv." (Bentley "Supersports
     Conv. Convertible") and "SUT" (HUMMER "H2 SUT Crew Cab") match nothing.

  Args:
    name: A class name such as ``'Audi S4 Sedan 2012'``.

  Returns:
    The body type.

  Raises:
    ValueError: the name matches no rule (not a Cars196 class name).
  """
  model = re.sub(r" (19|20)\d\d$", "", name.strip())
  if model in _CARS_MODELS_WITHOUT_BODY_WORD:
    return _CARS_MODELS_WITHOUT_BODY_WORD[model]
  words = [w for w in model.split() if w in _CARS_BODY_WORDS]
  if not words:
    raise ValueError(f"Cars196 class name {name!r} names no body type.")
  return _CARS_BODY_WORDS[words[-1]]


def cars196_fine_to_coarse(names: Sequence[str]) -> tuple[int, ...]:
  """Coarse (body type) id of each of the 196 Cars196 classes.

  Args:
    names: The 196 class names in label order (TFDS ``cars196`` label names).

  Returns:
    Indices into `CARS196_COARSE_NAMES`.

  Raises:
    ValueError: ``names`` are not the Cars196 classes: a name matches no rule,
      or the group sizes differ from the paper's (`CARS196_GROUP_SIZES`).
  """
  groups = [cars196_body_type(n) for n in names]
  sizes = {g: groups.count(g) for g in CARS196_COARSE_NAMES}
  if sizes != CARS196_GROUP_SIZES:
    raise ValueError(
        f"Cars196 body-type groups have sizes {sizes}, expected "
        f"{CARS196_GROUP_SIZES}: the class names are not the "
        "196 Cars196 classes."
    )
  return tuple(CARS196_COARSE_NAMES.index(g) for g in groups)


# ---------------------------------------------------------------------------
# Tables shipped as package data.
# ---------------------------------------------------------------------------


def _read_json(*parts: str):
  """Reads ``maskcon_jax/data/coarse_labels/<parts>``."""
  resource = importlib.resources.files("maskcon_jax") / "data" / "coarse_labels"
  for part in parts:
    resource = resource / part
  with resource.open("r", encoding="utf-8") as f:
    return json.load(f)


def _int_table(mapping: dict[str, int], size: int, what: str) -> np.ndarray:
  """``{"0": v0, "1": v1, ...}`` as an int32 array, checking the keys."""
  if sorted(int(k) for k in mapping) != list(range(size)):
    raise ValueError(f"{what} must have the keys 0..{size - 1}.")
  return np.asarray([int(mapping[str(i)]) for i in range(size)], np.int32)


IMAGENET_NUM_CLASSES = 1000
IMAGENET32_NUM_COARSE = 12


def imagenet32_tables() -> tuple[np.ndarray, np.ndarray]:
  """The two official ImageNet32 tables.

  Returns:
    ``(to_fine, fine_to_coarse)``: ``to_fine[l]`` is the standard ImageNet-1k
    label (sorted WordNet ids) of Imagenet32 / TFDS ``imagenet_resized`` label
    ``l``; ``fine_to_coarse[f]`` is the coarse group (0-11) of standard label
    ``f``. Both int32 of length 1000.
  """
  to_fine = _int_table(
      _read_json("imagenet32", "imagenet32_to_fine.json"),
      IMAGENET_NUM_CLASSES,
      "imagenet32_to_fine.json",
  )
  if sorted(to_fine) != list(range(IMAGENET_NUM_CLASSES)):
    raise ValueError("imagenet32_to_fine.json is not a permutation of 0..999.")
  fine_to_coarse = _int_table(
      _read_json("imagenet32", "imagenet_fine_to_coarse.json"),
      IMAGENET_NUM_CLASSES,
      "imagenet_fine_to_coarse.json",
  )
  return to_fine, fine_to_coarse


SOP_SUPER_CLASSES = (
    "bicycle",
    "cabinet",
    "chair",
    "coffee_maker",
    "fan",
    "kettle",
    "lamp",
    "mug",
    "sofa",
    "stapler",
    "table",
    "toaster",
)
SOP_SPLITS = (1, 2)


def sop_split_lists(
    split: int, subset: str
) -> tuple[list[str], np.ndarray, np.ndarray]:
  """One list of one of the paper's Stanford Online Products splits.

  Args:
    split: 1 (train and test products disjoint) or 2 (shared products).
    subset: ``'train'`` or ``'test'``.

  Returns:
    ``(paths, fine, coarse)``: image paths relative to the
    ``Stanford_Online_Products`` folder, product ids and super-category ids
    (indices into `SOP_SUPER_CLASSES`), as in the official lists. In split 1
    the product ids of each list start at 0 and name different products.
  """
  if split not in SOP_SPLITS or subset not in ("train", "test"):
    raise ValueError(f"No SOP split {split!r} / {subset!r}.")
  folder = f"sop_split{split}"
  paths = _read_json(folder, f"{subset}_path.json")
  fine = np.asarray(_read_json(folder, f"{subset}_fine_label.json"), np.int32)
  coarse = np.asarray(
      _read_json(folder, f"{subset}_coarse_label.json"), np.int32
  )
  if not len(paths) == len(fine) == len(coarse):
    raise ValueError(f"The {folder} {subset} lists differ in length.")
  return [str(p) for p in paths], fine, coarse
