"""The command line: ``python -m carclf <command>``.

Each command runs notebook stages through :mod:`carclf.workflow`, so what it
computes is cached exactly as if the notebook had run it.
"""

import argparse
import sys

from carclf.data import DatasetError


def _prepare(args):
    from carclf import workflow

    overrides = {}
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.image_size:
        overrides["image_size"] = (args.image_size, args.image_size)
    ws = workflow.Workspace.open(args.profile, root=args.root, **overrides)
    workflow.load_dataset(ws)
    workflow.decode_images(ws)
    print(workflow.summary(ws))
    return 0


def _run(args):
    from papermill.exceptions import PapermillExecutionError

    from carclf import workflow
    from carclf.config import PROFILES, Paths
    from carclf.data import detect_layout

    if PROFILES[args.profile]["dataset"] != "synthetic":
        # Fail before starting a kernel, with the data layer's message on what the folder should hold.
        detect_layout(args.dataset or Paths.default(args.root).root / PROFILES[args.profile]["dataset"])
    try:
        executed, html = workflow.run_notebook(args.profile, root=args.root, dataset=args.dataset)
    except PapermillExecutionError as exc:
        print(f"carclf: the notebook stopped in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
              f"The executed notebook, with the traceback, is in {Paths.default(args.root).reports}; "
              "fix the cause and run again: finished stages load from the cache.", file=sys.stderr)
        return 1
    print(f"executed notebook: {executed}\nHTML copy: {html}")
    return 0


def _demo(args):
    args.profile, args.dataset = "demo", None
    return _run(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m carclf", description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="where data/, pickles/, models/ and logs/ live (default: the project folder "
                                       "or $CARCLF_HOME)")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="load and validate the dataset, build the decoded image cache")
    prepare.add_argument("--profile", choices=["demo", "full"], default="demo")
    prepare.add_argument("--dataset", help="dataset folder (Kaggle class-folder copy or Stanford devkit)")
    prepare.add_argument("--image-size", type=int, help="square input size in pixels")
    prepare.set_defaults(run=_prepare)

    run = commands.add_parser("run", help="the notebook headless, end to end; executed copy and HTML in reports/")
    run.add_argument("--profile", choices=["demo", "full"], default="demo")
    run.add_argument("--dataset", help="dataset folder for the full profile (default: data/stanford_cars)")
    run.set_defaults(run=_run)

    demo = commands.add_parser("demo", help="the notebook end to end on the synthetic set (= run --profile demo)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except DatasetError as exc:
        print(f"carclf: {exc}", file=sys.stderr)
        return 2
