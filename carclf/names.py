"""The structure inside a Stanford Cars class name (spec-notes section 5): ``<make> <model ...> <year>``.

The last word is a four-digit year; the make is the first word, except for three two-word makes. So a
mistake can be told apart by kind: the right car in another year, another model of the right make, or
another make.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["MISTAKE_KINDS", "TWO_WORD_MAKES", "ClassName", "mistake_kinds", "parse_class_name"]

#: The makes of more than one word in the real set; every other make is the name's first word.
TWO_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")

#: The kinds of a wrong prediction, from the nearest miss to the farthest.
MISTAKE_KINDS = ("same model, other year", "same make, other model", "other make")


class ClassName(NamedTuple):
    make: str
    model: str  # everything between the make and the year ("S4 Sedan", "C/V Cargo Van Minivan")
    year: str | None  # None when the name does not end in a four-digit year

    @property
    def make_model(self) -> str:
        """The car without its year."""
        return f"{self.make} {self.model}".strip()


def parse_class_name(name: str) -> ClassName:
    """``"Audi S4 Sedan 2012"`` -> ``ClassName("Audi", "S4 Sedan", "2012")``; two-word makes kept whole."""
    words = str(name).split()
    year = words[-1] if words and len(words[-1]) == 4 and words[-1].isdigit() else None
    body = words[:-1] if year else words
    text = " ".join(body)
    make = next((m for m in TWO_WORD_MAKES if text == m or text.startswith(m + " ")), body[0] if body else "")
    return ClassName(make, text[len(make) :].strip(), year)


def mistake_kinds(y_true, y_pred, class_names) -> dict:
    """Accuracy at three levels and the share of each kind of mistake.

    Returns ``{"accuracy", "make_model_accuracy", "make_accuracy", "errors", <each of MISTAKE_KINDS>}``:
    accuracy ignoring the year, accuracy of the make alone, the number of wrong predictions, and for each
    kind the share of the wrong predictions it accounts for (the three shares add up to 1).
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    parsed = [parse_class_name(n) for n in class_names]
    make = np.array([p.make for p in parsed], dtype=object)
    make_model = np.array([p.make_model for p in parsed], dtype=object)
    right = y_true == y_pred
    same_car = make_model[y_true] == make_model[y_pred]
    same_make = make[y_true] == make[y_pred]
    wrong = ~right
    errors = int(wrong.sum())

    def share(mask):
        return float((mask & wrong).sum() / errors) if errors else float("nan")

    return {
        "accuracy": float(right.mean()) if right.size else float("nan"),
        "make_model_accuracy": float(same_car.mean()) if right.size else float("nan"),
        "make_accuracy": float(same_make.mean()) if right.size else float("nan"),
        "errors": errors,
        MISTAKE_KINDS[0]: share(same_car),
        MISTAKE_KINDS[1]: share(same_make & ~same_car),
        MISTAKE_KINDS[2]: share(~same_make),
    }
