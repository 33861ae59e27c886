"""The synthetic classes: a car drawing per class, with a name in the real set's form."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

RAM_CV = "Ram C/V Cargo Van Minivan 2012"


@dataclass(frozen=True)
class Family:
    """A body shape, in units of the car's length (x from the front, y up from the ground)."""

    name: str
    bodies: tuple  # the body words used in class names
    clear: float  # underside of the body
    belt: float  # top of the lower body (bonnet, doors, boot)
    roof: float | None  # None: no roof (convertible)
    cabin: tuple  # x of windscreen base, roof front, roof rear, rear-glass base
    wheels: tuple  # x of front and rear axle
    radius: float


FAMILIES = (
    Family("sedan", ("Sedan",), 0.07, 0.21, 0.34, (0.28, 0.40, 0.64, 0.80), (0.18, 0.80), 0.075),
    Family("hatchback", ("Hatchback",), 0.08, 0.25, 0.42, (0.24, 0.38, 0.80, 0.97), (0.17, 0.82), 0.085),
    Family("suv", ("SUV",), 0.11, 0.31, 0.50, (0.22, 0.33, 0.96, 0.99), (0.18, 0.80), 0.10),
    Family(
        "pickup",
        ("Crew Cab", "Extended Cab", "Regular Cab"),
        0.10,
        0.28,
        0.45,
        (0.24, 0.32, 0.52, 0.54),
        (0.17, 0.80),
        0.09,
    ),
    Family("coupe", ("Coupe",), 0.06, 0.18, 0.29, (0.30, 0.45, 0.60, 0.90), (0.18, 0.80), 0.07),
    # Index 5, so that class 174 (index 173, 173 % 8 == 5) is a van like the real Ram C/V.
    Family("van", ("Van", "Minivan", "Cargo Van"), 0.07, 0.30, 0.58, (0.05, 0.16, 0.97, 0.99), (0.15, 0.84), 0.075),
    Family("wagon", ("Wagon",), 0.07, 0.22, 0.35, (0.26, 0.38, 0.94, 0.98), (0.18, 0.80), 0.075),
    Family("convertible", ("Convertible",), 0.06, 0.19, None, (0.33, 0.42, 0.0, 0.0), (0.18, 0.80), 0.075),
)

#: (name, hue in degrees or None for greys, saturation range, value range).
COLOURS = (
    ("red", 0, (0.75, 0.95), (0.70, 0.92)),
    ("orange", 28, (0.80, 0.98), (0.85, 1.00)),
    ("yellow", 55, (0.75, 0.95), (0.85, 1.00)),
    ("green", 125, (0.65, 0.90), (0.50, 0.75)),
    ("cyan", 185, (0.70, 0.95), (0.75, 0.95)),
    ("blue", 228, (0.75, 0.95), (0.55, 0.85)),
    ("purple", 275, (0.55, 0.80), (0.50, 0.75)),
    ("pink", 325, (0.45, 0.70), (0.85, 1.00)),
    ("white", None, (0.00, 0.06), (0.90, 0.98)),
    ("black", None, (0.00, 0.10), (0.08, 0.18)),
    # Last, so the default 10 classes (which use the first 10 colours) have only
    # two greys, far apart.
    ("grey", None, (0.00, 0.06), (0.48, 0.60)),
)

# Past len(FAMILIES) * len(COLOURS) classes (8 and 11 are coprime, so k -> (k % 8, k % 11)
# is one-to-one below 88) a class also differs in these: wheel scale, height scale,
# stripe, number of window pillars.
# Past len(FAMILIES) * len(COLOURS) designs (8 and 11 are coprime, so d -> (d % 8, d % 11) is one-to-one
# below 88) a design also differs in these: wheel scale, height scale, number of window pillars. The stripe
# is kept for the two years of one car (see class_table).
_VARIANT_AXES = ((1.0, 1.3, 0.8), (1.0, 0.84, 1.18), (1, 2))


def _variant_order():
    """Every variant combination, each next one as unlike the ones before as possible."""
    pool = list(itertools.product(*(range(len(a)) for a in _VARIANT_AXES)))
    order = [pool.pop(0)]
    while pool:
        best = max(pool, key=lambda v: (min(sum(a != b for a, b in zip(v, u)) for u in order), -pool.index(v)))
        pool.remove(best)
        order.append(best)
    return order


_VARIANTS = _variant_order()
_DESIGNS = len(FAMILIES) * len(COLOURS) * len(_VARIANTS)


def _is_later_year(k: int) -> bool:
    """Whether class ``k`` is the later year of a car: the second class of every other make's three."""
    return k % 3 == 1 and (k // 3) % 2 == 0


def _design(k: int) -> int:
    """The drawing class ``k`` shares with the other year of its car, or its own (numbered in order)."""
    later = 0 if k < 1 else (k - 1) // 6 + 1  # the later years up to k: classes 1, 7, 13, ...
    return k - later


MAX_CLASSES = next(n for n in itertools.count(1) if _design(n) >= _DESIGNS)

_MAKES = (
    "Acura",
    "Aston Martin",
    "Audi",
    "BMW",
    "Bentley",
    "Buick",
    "Cadillac",
    "Chevrolet",
    "Chrysler",
    "Dodge",
    "Ferrari",
    "Fiat",
    "Ford",
    "GMC",
    "Honda",
    "Hyundai",
    "Infiniti",
    "Isuzu",
    "Jaguar",
    "Jeep",
    "Kia",
    "Lamborghini",
    "Land Rover",
    "Lincoln",
    "Mazda",
    "Mercedes-Benz",
    "Mitsubishi",
    "Nissan",
    "Porsche",
    "Rolls-Royce",
    "Scion",
    "Suzuki",
    "Toyota",
    "Volkswagen",
    "Volvo",
    "Spyker",
    "Hummer",
)
_SYLLABLES_A = (
    "Al",
    "Bre",
    "Cor",
    "Dar",
    "El",
    "Fal",
    "Gran",
    "Hor",
    "Ix",
    "Jet",
    "Kor",
    "Lu",
    "Mon",
    "Nov",
    "Ori",
    "Pra",
    "Qua",
)
_SYLLABLES_B = ("ado", "ber", "cia", "don", "ento", "far", "go", "lant", "mira", "nix", "ra", "sto", "vel")


@dataclass(frozen=True)
class CarClass:
    """What makes one synthetic class: its name and its drawing's attributes."""

    index: int  # 0-based class id
    name: str
    family: Family
    colour: tuple  # an entry of COLOURS
    wheel: float
    height: float
    stripe: bool
    pillars: int


def class_table(n_classes: int) -> list:
    """The ``n_classes`` synthetic classes; class ``k`` is the same for any ``n_classes > k`` except for the
    one renamed ``Ram C/V Cargo Van Minivan 2012`` (the 174th, or the last).

    The classes have the real set's structure (spec-notes section 5): a make for every three classes in a
    row, and in every other make two classes that differ only by year (the same model word and body), drawn
    nearly alike: the later year has a stripe along the body.
    """
    if not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"n_classes must be in 1..{MAX_CLASSES}, got {n_classes}")
    ram = 173 if n_classes >= 174 else n_classes - 1
    table = []
    for k in range(n_classes):
        d, later = _design(k), _is_later_year(k)
        family = FAMILIES[d % len(FAMILIES)]
        wheel, height, pillars = (
            axis[i] for axis, i in zip(_VARIANT_AXES, _VARIANTS[d // (len(FAMILIES) * len(COLOURS))])
        )
        # (d % 17, d // 17) fixes d below 221 and 5 is coprime to 13, so the model word is unique per design
        model = _SYLLABLES_A[d % 17] + _SYLLABLES_B[(5 * (d // 17) + d) % 13]
        if d >= 17 * 13:
            model += f" {d // (17 * 13) + 1}"
        body = family.bodies[(d // len(FAMILIES)) % len(family.bodies)]
        year = 1991 + (d * 7) % 22 + (4 if later else 0)
        name = f"{_MAKES[(k // 3) % len(_MAKES)]} {model} {body} {year}"
        colour = COLOURS[d % len(COLOURS)]
        table.append(CarClass(k, RAM_CV if k == ram else name, family, colour, wheel, height, later, pillars))
    return table
