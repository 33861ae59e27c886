"""Stanford Cars with eight CNNs, one stage at a time: ``python -m carclf COMMAND``.

Each command runs notebook stages through carclf.workflow, so what it computes
is cached exactly as if the notebook had run it, and a stage that has run
before (from here or from the notebook) loads instead of recomputing. An
interrupted command resumes where it stopped when run again.

evaluate, report and predict never search or train: they read what is stored
and say what to run when it is missing. Every error is one line,
"carclf: ...", with exit status 2.
"""

import argparse
import json
import sys

from carclf.cache.space import disk_full_message
from carclf.data import DatasetError
from carclf.settings import LABELS, MIN_INPUT_SIZES, MODEL_NAMES, PROFILES, SettingsError

#: Exit status for bad input (a missing dataset, an unknown model, nothing trained yet, a bad flag, a full disk).
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, its errors as the one ``carclf:`` line (the usage is what ``--help`` is for)."""

    def error(self, message):
        print(f"carclf: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def _at_least(low):
    """An argparse type: an integer >= ``low``; 0 or a negative number is an error, never "the default"."""

    def check(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer (it must be >= {low})") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is out of range: it must be an integer >= {low}")
        return value

    check.__name__ = f"integer >= {low}"
    return check


def _workspace(args, **overrides):
    """The workspace of the command's profile, its flags turned into settings overrides."""
    from carclf import workflow

    if args.dataset is not None:
        overrides["dataset"] = args.dataset
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.recipe is not None:
        overrides["recipe"] = args.recipe
    overrides.update(getattr(args, "set", None) or [])
    return workflow.Workspace.open(args.profile, root=args.root, **overrides)


def _setting(text):
    """``NAME=VALUE`` of ``--set``: the value read as a Python literal (0.5, True, None), else as text."""
    import ast

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. tta=True), got {text!r}")
    try:
        value = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        value = value.strip()
    return name.strip(), value


def _print_table(frame):
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        print(frame.round(4).to_string(sparsify=False))


def _prepare(args):
    from carclf import workflow

    ws = _workspace(args)
    workflow.load_dataset(ws)
    workflow.decode_images(ws, strict=args.strict)
    print(workflow.summary(ws))
    return 0


def _augment(args):
    from carclf import workflow

    ws = _workspace(args)
    augmented = workflow.augment_images(ws)
    if augmented is None:
        mode = ws.settings.augment.augmentation
        print(f"profile {ws.profile!r} augments {mode!r}: there is no offline set to build")
        return 0
    workflow.plot_augmentations(ws)
    print(
        f"augmented training set: {len(augmented)} images, {ws.settings.augment.n_variants} per original, "
        f"under {ws.paths.augmented}\nexamples: {workflow.report_path(ws, 'augment_grid')}"
    )
    return 0


def _search(args):
    from carclf import workflow

    ws = _workspace(args, **({"search.n_trials": args.trials} if args.trials is not None else {}))
    results = workflow.search_hyperparameters(ws, args.model)
    workflow.plot_search(ws, results)
    for name, result in results.items():
        print(f"{name}: {result.backend} search, {result.n_trials} trials (trial 0: the defaults)")
        _print_table(result.trials)
    print("best of each search against its trial one (the defaults):")
    _print_table(workflow.search_summary(results))
    print(f"plots: {workflow.report_path(ws, 'search_convergence')}, {workflow.report_path(ws, 'search_importance')}")
    return 0


def _box(text):
    try:
        x1, y1, x2, y2 = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X1,Y1,X2,Y2 (four integers, e.g. 40,60,320,150)") from None
    if x2 <= x1 or y2 <= y1:
        raise argparse.ArgumentTypeError(f"{text!r}: the box needs X2 > X1 and Y2 > Y1")
    return x1, y1, x2, y2


def _train(args):
    import pandas as pd

    from carclf import workflow
    from carclf.models import check_name

    names = [check_name(name) for name in args.model] if args.model else None
    ws = _workspace(args, **({"epochs": args.epochs} if args.epochs is not None else {}))
    labels = LABELS if args.hyperparams == "both" else (args.hyperparams,)
    if names is None and labels == LABELS:
        table = workflow.train_models(ws)
    else:
        table = pd.concat(
            [workflow.train_model(ws, name, labels) for name in names or ws.settings.models], ignore_index=True
        )
    _print_table(table.drop(columns=["train_key"]).set_index(["model", "hyperparams"]))
    print(f"models under {ws.paths.models}; `python -m carclf report` draws the plots")
    return 0


def _evaluate(args):
    from carclf import workflow
    from carclf.stats import wilson_interval

    ws = _workspace(args)
    row = workflow.trained_run(ws, args.model, args.hyperparams)
    if row.attrs.get("chosen"):
        print(row.attrs["chosen"])
    evaluation = workflow.evaluate_run(ws, row)
    stem = f"{row['model']}_{row['hyperparams']}"
    workflow.plot_evaluation(ws, row["model"], row["hyperparams"], evaluation, stem=stem)
    n, accuracy = len(evaluation.y_true), evaluation.metrics["accuracy"]
    low, high = wilson_interval(round(accuracy * n), n, ws.settings.evaluation.confidence)
    chosen = "" if args.model else f" (the best run by {_selection(row)})"
    print(f"{row['model']} with the {row['hyperparams']} hyperparameters{chosen}, on {n} test images")
    print(workflow.protocol_summary(ws))
    print(f"test accuracy {accuracy:.4f} [{low:.4f}, {high:.4f}] ({ws.settings.evaluation.confidence:.0%} interval)")
    print(evaluation.classification_report_text)
    print("accuracy by level and the kinds of mistakes:")
    _print_table(_mistakes_frame(evaluation.mistakes()))
    print("most confused pairs:")
    _print_table(evaluation.most_confused(10))
    print(
        f"confusion matrix: {workflow.report_path(ws, 'confusion', stem=stem)}\n"
        f"per-class report: {workflow.report_path(ws, 'classification', stem=stem)}"
    )
    return 0


def _selection(row):
    return "validation accuracy" if row.get("validation") == "split" else "test accuracy (the report's protocol)"


def _mistakes_frame(mistakes):
    import pandas as pd

    return pd.Series(mistakes, name="value").to_frame()


#: The comparison's columns on a terminal, in this order (the CSV under reports/ holds them all).
_REPORT_COLUMNS = (
    "validation",
    "kept_epoch",
    "val_accuracy",
    "val_loss",
    "accuracy",
    "accuracy_low",
    "accuracy_high",
    "top3_accuracy",
    "top5_accuracy",
    "loss",
    "best",
    "p_vs_best",
    "differs_from_best",
    "p_vs_default",
    "differs_from_default",
    "epochs_run",
    "wall_min",
)


def _report(args):
    from carclf import workflow

    ws = _workspace(args)
    table = workflow.write_report(ws)
    print(workflow.protocol_summary(ws))
    shown = [c for c in _REPORT_COLUMNS if c in table.columns]
    _print_table(table.set_index(["model", "hyperparams"])[shown])
    print(
        "* intervals are Wilson's (or bootstrap) at the confidence above; p-values are McNemar's exact test on "
        "the same test images; differs_* is False where the difference is not significant"
    )
    for note in table.attrs.get("chosen", []):
        print(note)
    missing = table.attrs["missing"]
    if missing:
        print("not trained yet: " + ", ".join(f"{name} ({label})" for name, label in missing))
    timings = ws.timer.table()
    if not timings.empty:
        print("execution time (minutes; the last row in hours):")
        _print_table(timings)
    print(f"tables and plots under {ws.paths.reports}")
    return 0


def _predict(args):
    from carclf import workflow

    ws = _workspace(args)
    table = workflow.predict(ws, args.images, args.model, args.hyperparams, args.model_file, top=args.top, box=args.box)
    if table.attrs.get("chosen"):
        print(table.attrs["chosen"], file=sys.stderr)  # stdout stays the table (or the JSON)
    if args.json:
        out = {
            image: [
                {"class": row.class_name, "class_id": int(row.class_id), "probability": float(row.probability)}
                for row in group.itertuples()
            ]
            for image, group in table.groupby("input", sort=False)
        }
        print(json.dumps(out, indent=2))
        return 0
    for image, group in table.groupby("input", sort=False):
        print(image)
        for row in group.itertuples():
            print(f"  {row.rank}. {row.class_name}  {row.probability:.4f}")
    return 0


def _run(args):
    from papermill.exceptions import PapermillExecutionError

    from carclf import workflow
    from carclf.data import detect_layout
    from carclf.paths import Paths
    from carclf.settings import PROFILES

    dataset = PROFILES[args.profile].data.dataset
    if dataset != "synthetic":
        # Fail before starting a kernel, with the data layer's message on what the folder should hold.
        detect_layout(args.dataset or Paths.default(args.root).root / dataset)
    try:
        executed, html = workflow.run_notebook(
            args.profile, root=args.root, dataset=args.dataset, recipe=getattr(args, "recipe", None)
        )
    except PapermillExecutionError as exc:
        print(
            f"carclf: the notebook stopped in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
            f"The executed notebook, with the traceback, is in {Paths.default(args.root).reports}; "
            "fix the cause and run again: finished stages load from the cache.",
            file=sys.stderr,
        )
        return 1
    print(f"executed notebook: {executed}\nHTML copy: {html}")
    return 0


def _demo(args):
    args.profile, args.dataset, args.recipe = "demo", None, None
    return _run(args)


_RECIPE = {
    "choices": ["report", "modern"],
    "help": "the fine-tuning recipe (default: the profile's; full: modern, demo: report); docs/recipes.md",
}


def _parents():
    """The flags shared by commands: ``--root`` (also after the command), the profile's, which run."""
    # --root is accepted after the command too; SUPPRESS keeps an absent one from hiding the global one.
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    profile = argparse.ArgumentParser(add_help=False, parents=[root])
    profile.add_argument(
        "--profile",
        choices=["demo", "full"],
        default="demo",
        help="demo: the synthetic set on a CPU; full: the report's run (default: demo)",
    )
    profile.add_argument(
        "--dataset",
        help="dataset folder, the Kaggle class-folder copy or the Stanford devkit "
        "(default for full: data/stanford_cars)",
    )
    profile.add_argument(
        "--image-size",
        type=int,
        help="square input size in pixels, at least the models' minimum (default: the profile's)",
    )
    profile.add_argument("--recipe", **_RECIPE)
    profile.add_argument(
        "--set",
        action="append",
        type=_setting,
        metavar="NAME=VALUE",
        help="change one setting by its dotted or plain name, e.g. evaluation.validation_fraction=0.25 "
        "(repeatable; names in docs/settings.md)",
    )
    which = argparse.ArgumentParser(add_help=False)
    which.add_argument(
        "--hyperparams",
        choices=["default", "optimal"],
        help="which run of the model (default: the better one by validation accuracy)",
    )
    return root, profile, which


def _stage_commands(command, profile, which):
    prepare = command("prepare", _prepare, "load and validate the dataset, build the decoded image cache")
    prepare.add_argument(
        "--strict", action="store_true", help="fail on any problem of the validation report (reports/validation.csv)"
    )
    command("augment", _augment, "build the offline augmented training set; a grid of examples in reports/")
    search = command("search", _search, "run (or resume, or extend) the hyperparameter search")
    search.add_argument(
        "--trials", type=_at_least(1), help="how many trials each search should have, >= 1 (more extends it)"
    )
    search.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a model to search, repeatable (default: every model the profile searches, search.models)",
    )
    train = command(
        "train",
        _train,
        "train models (default: every model of the profile) with the default and the optimal hyperparameters",
    )
    train.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help=f"a model to train, repeatable; one of {', '.join(MODEL_NAMES)}",
    )
    train.add_argument(
        "--hyperparams",
        choices=["default", "optimal", "both"],
        default="both",
        help="which runs: optimal ones need the search, which runs first if it has not",
    )
    train.add_argument("--epochs", type=_at_least(1), help="the most epochs per run, >= 1 (default: the profile's)")
    evaluate = command(
        "evaluate",
        _evaluate,
        "test a trained run: classification report, confusion matrix, the most confused classes",
        parents=(profile, which),
    )
    evaluate.add_argument("--model", metavar="NAME", help="the model (default: the best trained run)")
    command(
        "report",
        _report,
        "comparison table and plots, training curves and the execution-time table, for the runs trained so far",
    )
    predict = command(
        "predict", _predict, "the most probable classes of image files, from a saved model", parents=(profile, which)
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    predict.add_argument("--model", metavar="NAME", help="the model (default: the best trained run)")
    predict.add_argument("--model-file", help="a saved .keras file to use instead of a trained run")
    predict.add_argument("--top", type=_at_least(1), default=5, help="how many classes per image, >= 1 (default: 5)")
    predict.add_argument(
        "--box",
        type=_box,
        metavar="X1,Y1,X2,Y2",
        help="the car's box in pixels, for every "
        "image (default: a dataset image's annotated box, else the whole image)",
    )
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")


def build_parser():
    parser = _Parser(
        prog="python -m carclf",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--root",
        help="where data/, pickles/, models/, logs/ and reports/ live (default: the project folder or $CARCLF_HOME)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    root, profile, which = _parents()

    def command(name, run, help, parents=(profile,)):
        sub = commands.add_parser(name, help=help, description=help, parents=list(parents))
        sub.set_defaults(run=run)
        return sub

    _stage_commands(command, profile, which)
    run = command(
        "run", _run, "the notebook headless, end to end; the executed copy and HTML in reports/", parents=(root,)
    )
    run.add_argument("--profile", choices=["demo", "full"], default="demo")
    run.add_argument("--dataset", help="dataset folder for the full profile (default: data/stanford_cars)")
    run.add_argument("--recipe", **_RECIPE)
    command("demo", _demo, "the notebook end to end on the synthetic set (= run --profile demo)", parents=(root,))
    return parser


def _is_bad_input(exc):
    from carclf.workflow import ImageFileError, ModelFileError, NotTrainedError

    kinds = [DatasetError, NotTrainedError, ImageFileError, ModelFileError, SettingsError]
    models = sys.modules.get("carclf.models")  # loaded whenever its error can have been raised
    if models is not None:
        kinds.append(models.UnknownModelError)
    return isinstance(exc, tuple(kinds))


def _models_asked(args):
    """The models a command will build at ``--image-size``: each must accept it (None: no model is built,
    so one of the profile's accepting it is enough)."""
    settings = PROFILES[args.profile]
    if args.command == "train":
        return args.model or list(settings.models)
    if args.command == "search":
        searched = (settings.search.models or settings.models) if settings.search.per_model else [settings.search.model]
        return (args.model or list(searched)) if settings.search.input_size is None else []
    if args.command in ("evaluate", "predict") and args.model:
        return [args.model]
    return None


def _check_image_size(args):
    """``--image-size`` against the models' minimum sizes (carclf.settings.MIN_INPUT_SIZES: no Keras import)."""
    size = getattr(args, "image_size", None)
    if size is None:
        return
    asked = _models_asked(args)
    if asked is None:
        models = list(PROFILES[args.profile].models)
        low = min(MIN_INPUT_SIZES[m] for m in models)
        which = f"the smallest input any model of profile {args.profile!r} accepts"
    else:
        known = [m for m in asked if m in MIN_INPUT_SIZES]  # an unknown name fails later, with its own hint
        if not known:
            return
        low = max(MIN_INPUT_SIZES[m] for m in known)
        model = max(known, key=MIN_INPUT_SIZES.get)
        which = (
            f"the smallest input {model} accepts"
            if len(known) == 1
            else f"{model}'s minimum, the largest of {', '.join(known)}"
        )
    if size < low:
        raise SettingsError(
            f"data.decode.image_size must be an integer >= {low} ({which}), got {size}: give --image-size {low} or more"
        )


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or the one line of a bad flag (already printed)
        return exc.code
    try:
        _check_image_size(args)
        return args.run(args)
    except OSError as exc:
        message = disk_full_message(exc)
        if message is None:
            raise
        print(f"carclf: {message}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as exc:
        storage = sys.modules.get("carclf.search.storage")  # loaded whenever its error can have been raised
        if storage is not None and isinstance(exc, storage.DatabaseLostError):
            print(f"carclf: {' '.join(str(exc).split())}", file=sys.stderr)  # not bad input: exit status 1
            return 1
        if not _is_bad_input(exc):
            raise
        print(f"carclf: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message
        return USAGE_ERROR
