"""How results are obtained: the validation split selects, the test set is read once, figures come with
intervals and paired tests, mistakes are told apart by kind, and the evaluation protocol is recorded."""

import logging
import math

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
from _helpers import model1_run

from carclf.augment import build_augmented_set
from carclf.cache import StageCache
from carclf.decoded import decode_image
from carclf.evaluate import add_uncertainty, evaluate_predictions, predict_probabilities
from carclf.generators import ImageBatches, make_generators
from carclf.names import MISTAKE_KINDS, mistake_kinds, parse_class_name
from carclf.settings import AugmentSettings, DecodeSettings, EvalSettings, SettingsError, profile
from carclf.splits import DecodedSplit, validation_split
from carclf.stats import bootstrap_interval, mcnemar, wilson_interval

# --------------------------------------------------------------------------- #
# The validation split
# --------------------------------------------------------------------------- #


def _split(counts, name="train"):
    class_ids = np.repeat(np.arange(len(counts)), counts)
    images = np.zeros((len(class_ids), 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(class_ids)) % 256
    return DecodedSplit(images, class_ids, [f"/cars/{i:05d}.jpg" for i in range(len(class_ids))], name, len(counts))


def test_the_validation_split_is_stratified_seeded_and_disjoint():
    split = _split([20, 30, 10])
    fit, val = validation_split(split, 0.1, seed=3)
    assert np.bincount(val.class_ids).tolist() == [2, 3, 1]
    assert not set(fit.indices) & set(val.indices) and len(fit) + len(val) == len(split)
    assert np.array_equal(validation_split(split, 0.1, seed=3)[1].indices, val.indices)
    assert not np.array_equal(validation_split(split, 0.1, seed=4)[1].indices, val.indices)
    assert (fit.split, val.split) == ("train", "validation")


def test_a_bad_validation_fraction_says_what_works(caplog):
    split = _split([20, 8, 12])
    for bad in (0, 0.6, -0.1):
        with pytest.raises(SettingsError, match=r"validation_fraction must be a number in \(0, 0.5\]"):
            validation_split(split, bad)
    with pytest.raises(
        SettingsError,
        match=r"gives class 1 \(8 training images\) no validation image; the smallest "
        r"fraction that holds one image of every class is 0.063",
    ):
        validation_split(split, 0.05)
    validation_split(split, 0.063)  # the fraction it names works
    with pytest.raises(SettingsError, match="evaluation.validation_fraction must be a number in"):
        profile("demo", validation_fraction=0.7)

    with caplog.at_level(logging.WARNING, logger="carclf.splits"):
        fit, val = validation_split(_split([10, 1, 10]), 0.2)
    assert "1 classes have a single training image" in caplog.text
    assert 1 in fit.class_ids and 1 not in val.class_ids  # it stays in training


def test_offline_variants_of_validation_images_stay_out_of_training(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 20, 3), dtype=np.uint8)
    train = DecodedSplit(images, np.arange(24) % 4, [f"/cars/train/{i:05d}.jpg" for i in range(24)], "train", 4)
    test = DecodedSplit(images[:8], np.arange(8) % 4, [f"/cars/test/{i:05d}.jpg" for i in range(8)], "test", 4)
    cache = StageCache(tmp_path / "pickles")
    augmented = build_augmented_set(
        train, cache, AugmentSettings(n_variants=2), out_dir=tmp_path / "a", workers=1, progress=False
    )
    gens = make_generators(
        {"train": train, "test": test}, batch_size=5, validation_fraction=0.25, augmented=augmented, cache=cache
    )
    assert gens.protocol == "split"
    val_rows = set(gens.validation.split.indices)
    assert len(val_rows) == 8 and np.bincount(gens.validation.split.class_ids).tolist() == [2, 2, 2, 2]
    originals, variants = gens.train.split._parts
    assert not set(originals.indices) & val_rows
    sources = augmented.manifest["row"].to_numpy()[variants.indices]
    assert len(sources) == 2 * 16 and not set(sources) & val_rows  # no validation image's variant trains
    assert len(gens.train.split) == 16 + 32
    report = make_generators({"train": train, "test": test}, augmented=augmented, cache=cache)
    assert report.protocol == "test" and report.validation is report.test


# --------------------------------------------------------------------------- #
# The test set is read once, after training
# --------------------------------------------------------------------------- #


class Sealed(ImageBatches):
    """Test batches that may be read only once training has returned."""

    open = False

    def __getitem__(self, index):
        if not Sealed.open:
            raise AssertionError("the test set was read before fit returned")
        return super().__getitem__(index)


def test_the_test_set_is_read_only_after_training(synthetic_cars32, tmp_path, monkeypatch):
    decoded = synthetic_cars32.decoded
    fit, val = validation_split(decoded["train"], 0.1, seed=0)
    fit_orig = keras.Model.fit

    def fit_then_open(self, *args, **kwargs):
        history = fit_orig(self, *args, **kwargs)
        Sealed.open = True
        return history

    monkeypatch.setattr(keras.Model, "fit", fit_then_open)
    Sealed.open = False
    train = ImageBatches(fit, 32, shuffle=True, seed=0)
    test = Sealed(decoded["test"], 50, shuffle=False)
    result = model1_run(
        train,
        test,
        tmp_path,
        {"learning_rate": 3e-3},
        2,
        plot=False,
        tensorboard=False,
        validation_generator=ImageBatches(val, 50, shuffle=False),
    )
    assert result.validation == "split" and 1 <= result.kept_epoch <= 2
    history = pd.read_csv(result.history_path)
    assert result.val_metrics["loss"] == pytest.approx(history["val_loss"].iloc[result.kept_epoch - 1])
    assert len(np.load(result.test_probabilities_path)) == len(decoded["test"])
    assert 0 <= result.test_metrics["accuracy"] <= 1


def test_the_reports_protocol_still_runs_when_named(synthetic_cars32, tmp_path):
    decoded = synthetic_cars32.decoded
    train = ImageBatches(decoded["train"], 32, shuffle=True, seed=0)
    test = ImageBatches(decoded["test"], 50, shuffle=False)
    result = model1_run(train, test, tmp_path, {"learning_rate": 3e-3}, 2, plot=False, tensorboard=False)
    assert result.validation == "test"  # the test set chose the epoch, as in the report
    assert result.val_metrics["loss"] == pytest.approx(result.test_metrics["loss"], rel=1e-4)


# --------------------------------------------------------------------------- #
# Intervals and paired tests
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["wilson", "bootstrap"])
def test_intervals_cover_the_true_proportion_at_about_the_stated_rate(method):
    rng = np.random.default_rng(11)
    true, n, runs = 0.7, 150, 300
    covered = 0
    for run in range(runs):
        correct = rng.random(n) < true
        low, high = (
            wilson_interval(int(correct.sum()), n) if method == "wilson" else bootstrap_interval(correct, seed=run)
        )
        covered += low <= true <= high
    assert 0.91 <= covered / runs <= 0.985, covered / runs


def test_mcnemar_against_a_hand_worked_example():
    # 5 images only run a gets right, 15 only run b: p = 2 * sum_{i<=5} C(20, i) / 2^20 = 2 * 21700 / 1048576
    a = np.array([1] * 5 + [0] * 15 + [1] * 30 + [0] * 10, bool)
    b = np.array([0] * 5 + [1] * 15 + [1] * 30 + [0] * 10, bool)
    test = mcnemar(a, b)
    assert (test["b"], test["c"]) == (5, 15)
    assert test["p_value"] == pytest.approx(2 * 21700 / 2**20)
    assert mcnemar(a, a)["p_value"] == 1.0


def test_the_comparison_gets_intervals_and_marks_what_is_not_significant():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)

    def predictions(accuracy, seed):
        r = np.random.default_rng(seed)
        pred = np.where(r.random(len(y)) < accuracy, y, (y + 1) % 4)
        return np.eye(4, dtype=np.float32)[pred] * 0.9 + 0.025

    table = pd.DataFrame(
        {
            "model": ["a", "a", "b", "b"],
            "hyperparams": ["default", "optimal", "default", "optimal"],
            "validation": ["split"] * 4,
            "val_accuracy": [0.60, 0.80, 0.79, 0.50],
            "accuracy": [0.6, 0.8, 0.8, 0.5],
        }
    )
    probs = [predictions(0.6, 1), predictions(0.8, 2), predictions(0.8, 3), predictions(0.5, 4)]
    out = add_uncertainty(table, probs, y, EvalSettings())
    assert out["best"].tolist() == [False, True, False, False]  # by validation accuracy, not by test
    assert (out["accuracy_low"] < out["accuracy_high"]).all() and (out["accuracy_high"] <= 1).all()
    assert out.loc[2, "differs_from_best"] == False  # noqa: E712  same accuracy: not significant
    assert out.loc[0, "differs_from_best"] and out.loc[3, "differs_from_best"]
    assert math.isnan(out.loc[0, "p_vs_default"]) and out.loc[1, "p_vs_default"] < 0.05
    assert out["n_test"].eq(400).all()


# --------------------------------------------------------------------------- #
# What kind of mistake
# --------------------------------------------------------------------------- #

#: The 49 makes of the real set (spec-notes section 5).
MAKES = (
    "Acura",
    "AM General",
    "Aston Martin",
    "Audi",
    "Bentley",
    "BMW",
    "Bugatti",
    "Buick",
    "Cadillac",
    "Chevrolet",
    "Chrysler",
    "Daewoo",
    "Dodge",
    "Eagle",
    "Ferrari",
    "FIAT",
    "Fisker",
    "Ford",
    "Geo",
    "GMC",
    "Honda",
    "HUMMER",
    "Hyundai",
    "Infiniti",
    "Isuzu",
    "Jaguar",
    "Jeep",
    "Lamborghini",
    "Land Rover",
    "Lincoln",
    "Maybach",
    "Mazda",
    "McLaren",
    "Mercedes-Benz",
    "MINI",
    "Mitsubishi",
    "Nissan",
    "Plymouth",
    "Porsche",
    "Ram",
    "Rolls-Royce",
    "Scion",
    "smart",
    "Spyker",
    "Suzuki",
    "Tesla",
    "Toyota",
    "Volkswagen",
    "Volvo",
)


def test_the_name_parser_knows_the_makes():
    assert len(MAKES) == 49
    for make in MAKES:
        parsed = parse_class_name(f"{make} Some Model Sedan 2012")
        assert (parsed.make, parsed.model, parsed.year) == (make, "Some Model Sedan", "2012")
    assert parse_class_name("AM General Hummer SUV 2000") == ("AM General", "Hummer SUV", "2000")
    assert parse_class_name("Land Rover LR2 SUV 2012").make_model == "Land Rover LR2 SUV"
    assert parse_class_name("Aston Martin V8 Vantage Convertible 2012").make == "Aston Martin"
    assert parse_class_name("Ram C/V Cargo Van Minivan 2012") == ("Ram", "C/V Cargo Van Minivan", "2012")


def test_mistakes_are_told_apart_by_kind():
    names = ["Audi S4 Sedan 2007", "Audi S4 Sedan 2012", "Audi TT Coupe 2012", "BMW M3 Coupe 2012"]
    y_true = np.array([0, 0, 0, 0, 1, 2, 3, 3])
    y_pred = np.array([0, 0, 1, 2, 1, 3, 3, 0])  # right, right, year, model, right, make, right, make
    kinds = mistake_kinds(y_true, y_pred, names)
    assert kinds["accuracy"] == 0.5 and kinds["errors"] == 4
    assert kinds["make_model_accuracy"] == pytest.approx(5 / 8) and kinds["make_accuracy"] == pytest.approx(6 / 8)
    assert [kinds[k] for k in MISTAKE_KINDS] == [0.25, 0.25, 0.5]
    evaluation = evaluate_predictions(y_true, np.eye(4)[y_pred], names)
    assert evaluation.mistakes() == kinds
    per_class = evaluation.per_class()
    assert per_class["support"].tolist() == [4, 1, 1, 2]
    assert per_class.loc["Audi S4 Sedan 2007", "accuracy"] == 0.5
    assert (per_class["low"] <= per_class["accuracy"]).all() and (per_class["accuracy"] <= per_class["high"]).all()


def test_the_synthetic_set_has_makes_and_years_of_one_car():
    from carclf.synthetic import class_table

    table = class_table(10)
    parsed = [parse_class_name(c.name) for c in table]
    makes = pd.Series([p.make for p in parsed]).value_counts()
    assert (makes >= 3).sum() >= 3  # a few makes with several classes
    pairs = [
        (a, b)
        for a, b in zip(table, table[1:])
        if parse_class_name(a.name).make_model == parse_class_name(b.name).make_model
    ]
    assert len(pairs) == 2
    for a, b in pairs:  # drawn nearly alike: the same body and colour, the later year striped
        assert (a.family, a.colour, a.wheel, a.height, a.pillars) == (b.family, b.colour, b.wheel, b.height, b.pillars)
        assert (a.stripe, b.stripe) == (False, True) and a.name.split()[-1] < b.name.split()[-1]


# --------------------------------------------------------------------------- #
# The evaluation protocol: crop, resize, TTA
# --------------------------------------------------------------------------- #


@pytest.fixture
def drawn(tmp_path):
    """A 200x100 black image; the box (50, 25)-(150, 75) is red with a blue left quarter."""
    image = np.zeros((100, 200, 3), np.uint8)
    image[25:75, 50:150] = (0, 0, 255)  # BGR red
    image[25:75, 50:75] = (255, 0, 0)  # BGR blue
    path = tmp_path / "drawn.png"
    cv2.imwrite(str(path), image)
    return path, (50, 25, 150, 75)


def _colours(rgb):
    return {
        "red": (rgb[..., 0] > 200) & (rgb[..., 2] < 50),
        "blue": (rgb[..., 2] > 200) & (rgb[..., 0] < 50),
        "black": rgb.max(axis=-1) < 30,
    }


def test_each_crop_and_resize_mode_gives_its_geometry(drawn):
    path, box = drawn

    def decode(**settings):
        return _colours(decode_image(path, box, DecodeSettings(image_size=40, margin=0, **settings)))

    stretch = decode(resize="stretch")  # the 2:1 box squeezed to a square: a quarter blue, the rest red
    assert stretch["blue"][:, :9].all() and stretch["red"][:, 11:].all() and not stretch["black"].any()
    pad = decode(resize="pad")  # letterboxed: 40x20 of car, black bands of 10 rows above and below
    assert pad["black"][:9].all() and pad["black"][31:].all()
    assert pad["blue"][11:29, :9].all() and pad["red"][11:29, 11:].all()
    center = decode(resize="center")  # the short side to 40: 80x40, its middle 40 columns, all red
    assert center["red"].all()
    whole = decode(crop="full", resize="pad")  # the whole 2:1 image, letterboxed: black around the box
    assert whole["black"][:9].all() and whole["red"][18:22, 20:28].all() and whole["blue"][18:22, 11:14].all()


def test_test_time_augmentation_averages_an_image_and_its_flip():
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")]
    model = keras.Sequential([keras.Input((4, 6, 3)), *layers])
    images = np.random.default_rng(0).uniform(0, 255, (5, 4, 6, 3)).astype(np.float32)
    split = DecodedSplit(images.astype(np.uint8), np.arange(5) % 3, [str(i) for i in range(5)], "test", 3)
    batches = ImageBatches(split, 2, shuffle=False)
    x = split.read(np.arange(5))
    plain, flipped = model.predict(x, verbose=0), model.predict(x[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(predict_probabilities(model, batches), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        predict_probabilities(model, batches, tta=True), (plain + flipped) / 2, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(plain, flipped)  # the flip does change this model's answer


def test_refit_trains_again_on_training_and_validation_for_the_kept_epochs(synthetic_cars32, tmp_path):
    from carclf.paths import Store
    from carclf.settings import TrainSettings
    from carclf.train import TrainResult
    from carclf.workflow import compare_default_optimal

    decoded = synthetic_cars32.decoded
    fit, val = validation_split(decoded["train"], 0.1, seed=0)
    train, every = ImageBatches(fit, 32, shuffle=True), ImageBatches(decoded["train"], 32, shuffle=True)
    test, validation = ImageBatches(decoded["test"], 50, shuffle=False), ImageBatches(val, 50, shuffle=False)
    settings = TrainSettings(epochs=3, verbose=0, plot=False, tensorboard=False)
    store = Store.at(tmp_path)
    row = compare_default_optimal(
        "model1",
        None,
        train,
        test,
        validation_generator=validation,
        refit_generator=every,
        settings=settings,
        store=store,
        labels=("default",),
    ).iloc[0]
    assert row["refit"] and row["validation"] == "split" and row["train_key"] != row["selection_key"]
    refit = TrainResult.from_value(_value(store, row["train_key"]), row["train_key"], True, store.paths)
    assert refit.epochs_run == row["kept_epoch"] and refit.test_metrics["accuracy"] == row["accuracy"]


def _value(store, key):
    from carclf.cache import load_pickle

    return load_pickle(store.cache.path("train-model1", key))["value"]
