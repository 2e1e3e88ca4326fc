"""The label tables of maskcon_jax.hierarchies and LabelHierarchy levels."""

import collections
import re

import numpy as np
import pytest

from maskcon_jax import hierarchies
from maskcon_jax import input_pipeline

# ----------------------------------------------------------------------------
# CIFAR-100.
# ----------------------------------------------------------------------------

# The superclass of each class as CIFAR-100's own `coarse_labels` field numbers
# it, written out independently of the name lists in hierarchies.py.
_CIFAR100_COARSE_FIELD = (
    4,
    1,
    14,
    8,
    0,
    6,
    7,
    7,
    18,
    3,
    3,
    14,
    9,
    18,
    7,
    11,
    3,
    9,
    7,
    11,
    6,
    11,
    5,
    10,
    7,
    6,
    13,
    15,
    3,
    15,
    0,
    11,
    1,
    10,
    12,
    14,
    16,
    9,
    11,
    5,
    5,
    19,
    8,
    8,
    15,
    13,
    14,
    17,
    18,
    10,
    16,
    4,
    17,
    4,
    2,
    0,
    17,
    4,
    18,
    17,
    10,
    3,
    2,
    12,
    12,
    16,
    12,
    1,
    9,
    19,
    2,
    10,
    0,
    1,
    16,
    12,
    9,
    13,
    15,
    13,
    16,
    19,
    2,
    4,
    6,
    19,
    5,
    5,
    8,
    19,
    18,
    1,
    2,
    15,
    6,
    0,
    17,
    8,
    14,
    13,
)


def test_cifar100_table():
  assert len(hierarchies.CIFAR100_FINE_NAMES) == 100
  assert list(hierarchies.CIFAR100_FINE_NAMES) == sorted(
      hierarchies.CIFAR100_FINE_NAMES
  )
  assert len(hierarchies.CIFAR100_COARSE_NAMES) == 20
  table = hierarchies.cifar100_fine_to_coarse()
  assert table == _CIFAR100_COARSE_FIELD
  assert collections.Counter(table) == {c: 5 for c in range(20)}


# ----------------------------------------------------------------------------
# Fashion-MNIST groupings.
# ----------------------------------------------------------------------------

# Every class's group, written out by name (not derived from the package).
_MIXED_GROUP = {
    "T-shirt/top": "mixed_a",
    "Trouser": "mixed_a",
    "Pullover": "mixed_a",
    "Dress": "mixed_b",
    "Coat": "mixed_b",
    "Sandal": "mixed_a",
    "Shirt": "mixed_b",
    "Sneaker": "mixed_b",
    "Bag": "mixed_a",
    "Ankle boot": "mixed_b",
}
_NATURAL_GROUP = {
    "T-shirt/top": "tops",
    "Pullover": "tops",
    "Coat": "tops",
    "Shirt": "tops",
    "Sandal": "footwear",
    "Sneaker": "footwear",
    "Ankle boot": "footwear",
    "Trouser": "other",
    "Dress": "other",
    "Bag": "other",
}


def test_fashion_mnist_mixed_hierarchy_table():
  h = input_pipeline.HIERARCHIES["fashion_mnist_mixed"]
  assert h is input_pipeline.FASHION_MNIST_MIXED_HIERARCHY
  assert h.fine_names == (
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
  assert h.coarse_names == ("mixed_a", "mixed_b")
  groups = {
      name: h.coarse_names[h.fine_to_coarse[f]]
      for f, name in enumerate(h.fine_names)
  }
  assert groups == _MIXED_GROUP
  # Labels 0, 1, 2, 5, 8 form group A and 3, 4, 6, 7, 9 group B.
  np.testing.assert_array_equal(
      np.flatnonzero(np.asarray(h.fine_to_coarse) == 0), [0, 1, 2, 5, 8]
  )


@pytest.mark.parametrize(
    "a,b",
    [("T-shirt/top", "Shirt"), ("Pullover", "Coat"), ("Sandal", "Sneaker")],
)
def test_fashion_mnist_mixed_splits_the_close_pairs(a, b):
  h = input_pipeline.FASHION_MNIST_MIXED_HIERARCHY
  coarse = dict(zip(h.fine_names, h.fine_to_coarse))
  assert coarse[a] != coarse[b]


def test_fashion_mnist_mixed_cuts_across_every_natural_group():
  h = input_pipeline.FASHION_MNIST_MIXED_HIERARCHY
  mixed = dict(zip(h.fine_names, h.fine_to_coarse))
  for natural in ("tops", "footwear", "other"):
    members = [n for n, g in _NATURAL_GROUP.items() if g == natural]
    assert {mixed[n] for n in members} == {0, 1}, natural


def test_fashion_mnist_natural_grouping_is_the_datasets_own():
  table, names = hierarchies.fashion_mnist_grouping("natural")
  assert names == ("tops", "footwear", "other")
  assert {
      n: names[c] for n, c in zip(hierarchies.FASHION_MNIST_NAMES, table)
  } == _NATURAL_GROUP
  assert input_pipeline.HIERARCHIES["fashion_mnist"].fine_to_coarse == (
      0,
      2,
      0,
      2,
      0,
      1,
      0,
      1,
      2,
      1,
  )
  with pytest.raises(ValueError, match="not one of natural, mixed"):
    hierarchies.fashion_mnist_grouping("bad")


# ----------------------------------------------------------------------------
# Cars196.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cars_names():
  tfds = pytest.importorskip("tensorflow_datasets")
  # The class names ship with the TFDS builder's code; no data is needed.
  names = tfds.builder("cars196").info.features["label"].names
  assert len(names) == 196
  return list(names)


def test_cars196_every_class_lands_in_exactly_one_group(cars_names):
  groups = [hierarchies.cars196_body_type(n) for n in cars_names]
  assert collections.Counter(groups) == {
      "pickup/cab": 18,
      "sedan": 50,
      "SUV": 36,
      "convertible": 30,
      "coupe": 29,
      "hatchback": 14,
      "wagon": 6,
      "van": 13,
  }
  table = hierarchies.cars196_fine_to_coarse(cars_names)
  assert [hierarchies.CARS196_COARSE_NAMES[c] for c in table] == groups
  h = input_pipeline.LabelHierarchy(
      table, cars_names, hierarchies.CARS196_COARSE_NAMES
  )
  assert (h.num_fine, h.num_coarse) == (196, 8)


def test_cars196_names_with_a_body_word_follow_their_last_one(cars_names):
  words = {
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
  checked = 0
  for name in cars_names:
    found = [w for w in name.split() if w in words]
    if found:
      assert hierarchies.cars196_body_type(name) == words[found[-1]], name
      checked += 1
  assert checked == 196 - 14


@pytest.mark.parametrize(
    "name,group",
    [
        ("Rolls-Royce Phantom Drophead Coupe Convertible 2012", "convertible"),
        ("Ford E-Series Wagon Van 2012", "van"),
        ("Ram C/V Cargo Van Minivan 2012", "van"),
        ("Chevrolet Express Cargo Van 2007", "van"),
        ("Nissan NV Passenger Van 2012", "van"),
        ("Dodge Dakota Club Cab 2007", "pickup/cab"),
        ("Dodge Ram Pickup 3500 Quad Cab 2009", "pickup/cab"),
        ("Chevrolet Silverado 1500 Classic Extended Cab 2007", "pickup/cab"),
        ("Ford F-150 Regular Cab 2012", "pickup/cab"),
        ("HUMMER H2 SUT Crew Cab 2009", "pickup/cab"),
        ("Ford Ranger SuperCab 2011", "pickup/cab"),
        (
            "Bentley Continental Supersports Conv. Convertible 2012",
            "convertible",
        ),
        ("Infiniti G Coupe IPL 2012", "coupe"),
        ("Hyundai Elantra Touring Hatchback 2012", "hatchback"),
        # Names without a body-type word.
        ("Acura TL Type-S 2008", "sedan"),
        ("Acura Integra Type R 2001", "coupe"),
        ("Buick Regal GS 2012", "sedan"),
        ("Chevrolet Corvette ZR1 2012", "convertible"),
        ("Chevrolet Corvette Ron Fellows Edition Z06 2007", "convertible"),
        ("Chevrolet HHR SS 2010", "SUV"),
        ("Chevrolet Cobalt SS 2010", "coupe"),
        ("Chevrolet TrailBlazer SS 2009", "SUV"),
        ("Chrysler 300 SRT-8 2010", "sedan"),
        ("Dodge Challenger SRT8 2011", "coupe"),
        ("Dodge Charger SRT-8 2009", "sedan"),
        ("FIAT 500 Abarth 2012", "hatchback"),
        ("Jaguar XK XKR 2012", "convertible"),
        ("Lamborghini Gallardo LP 570-4 Superleggera 2012", "convertible"),
    ],
)
def test_cars196_special_cases(cars_names, name, group):
  assert name in cars_names
  assert hierarchies.cars196_body_type(name) == group


def test_cars196_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="names no body type"):
    hierarchies.cars196_body_type("Tesla Cybertruck 2024")
  with pytest.raises(ValueError, match="group"):
    hierarchies.cars196_fine_to_coarse(["Audi S4 Sedan 2012"])


# ----------------------------------------------------------------------------
# ImageNet32 tables.
# ----------------------------------------------------------------------------


def test_imagenet32_tables():
  to_fine, fine_to_coarse = hierarchies.imagenet32_tables()
  assert to_fine.shape == fine_to_coarse.shape == (1000,)
  assert sorted(to_fine) == list(range(1000))
  sizes = np.bincount(fine_to_coarse)
  assert len(sizes) == 12
  assert sizes.min() == 53 and sizes.max() == 130 and sizes.sum() == 1000


def test_imagenet32_to_fine_matches_tfds_class_order():
  tfds = pytest.importorskip("tensorflow_datasets")
  names = tfds.builder("imagenet_resized/32x32").info.features["label"].names
  assert all(re.fullmatch(r"n\d{8}", n) for n in names)
  to_fine, _ = hierarchies.imagenet32_tables()
  standard = sorted(names)
  assert [standard[f] for f in to_fine] == list(names)


# ----------------------------------------------------------------------------
# Stanford Online Products splits.
# ----------------------------------------------------------------------------


def _products(paths):
  return [p.rsplit("_", 1)[0] for p in paths]


@pytest.mark.parametrize(
    "split,num_train,num_test", [(1, 25368, 25278), (2, 14980, 2996)]
)
def test_sop_split_lists(split, num_train, num_test):
  train = hierarchies.sop_split_lists(split, "train")
  test = hierarchies.sop_split_lists(split, "test")
  assert len(train[0]) == num_train and len(test[0]) == num_test
  for paths, fine, coarse in (train, test):
    assert fine.dtype == coarse.dtype == np.int32
    assert set(coarse) == set(range(12))
    # Each product is one path stem and sits in its super-category's folder.
    stem = {}
    for p, f, c in zip(_products(paths), fine, coarse):
      assert stem.setdefault(f, p) == p
      assert p.split("/")[0] == hierarchies.SOP_SUPER_CLASSES[c] + "_final"
  assert not set(train[0]) & set(test[0])
  train_products = set(_products(train[0]))
  test_products = set(_products(test[0]))
  if split == 1:
    assert not train_products & test_products
    assert (len(train_products), len(test_products)) == (2517, 2518)
  else:
    assert train_products == test_products and len(train_products) == 1498
    train_of = dict(zip(train[1], _products(train[0])))
    assert all(train_of[f] == p for f, p in zip(test[1], _products(test[0])))


# ----------------------------------------------------------------------------
# LabelHierarchy levels.
# ----------------------------------------------------------------------------


def test_label_hierarchy_with_three_levels():
  h = input_pipeline.LabelHierarchy(
      fine_to_coarse=(0, 0, 1, 2),
      fine_names=("a", "b", "c", "d"),
      coarse_names=("x", "y", "z"),
      upper_levels=[(0, 0, 1)],
      upper_names=[("left", "right")],
  )
  assert h.num_levels == 3
  assert h.level_names(2) == ("left", "right")
  assert h.level_names(0) == ("a", "b", "c", "d")
  fine = np.array([3, 2, 1, 0])
  np.testing.assert_array_equal(h.labels_at(fine, 0), fine)
  np.testing.assert_array_equal(h.labels_at(fine, 1), [2, 1, 0, 0])
  np.testing.assert_array_equal(h.labels_at(fine, 2), [1, 0, 0, 0])
  assert h.upper_levels == ((0, 0, 1),)  # Lists normalised to tuples.
  assert hash(h) == hash(
      input_pipeline.LabelHierarchy(
          (0, 0, 1, 2),
          ("a", "b", "c", "d"),
          ("x", "y", "z"),
          ((0, 0, 1),),
          (("left", "right"),),
      )
  )
  with pytest.raises(ValueError, match="Level 3"):
    h.labels_at(fine, 3)


def test_two_level_hierarchy_is_unchanged():
  h = input_pipeline.LabelHierarchy((1, 0), ("a", "b"), ("x", "y"))
  assert h.num_levels == 2 and h.upper_levels == ()
  np.testing.assert_array_equal(h.labels_at([0, 1], 1), [1, 0])


@pytest.mark.parametrize(
    "upper_levels,upper_names,match",
    [
        ([(0, 0)], [("p",)], "level 1 has 3 classes"),
        ([(0, 0, 2)], [("p", "q")], "outside"),
        ([(0, 0, 0)], [("p", "q")], "no child class"),
        ([(0, 0, 0)], [], "upper_names"),
    ],
)
def test_label_hierarchy_level_validation(upper_levels, upper_names, match):
  with pytest.raises(ValueError, match=match):
    input_pipeline.LabelHierarchy(
        (0, 1, 2), ("a", "b", "c"), ("x", "y", "z"), upper_levels, upper_names
    )
