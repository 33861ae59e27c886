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


def _demo(args):
    args.profile, args.dataset, args.image_size = "demo", None, None
    return _prepare(args)


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

    demo = commands.add_parser("demo", help="everything that exists, end to end, on the synthetic set")
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except DatasetError as exc:
        print(f"carclf: {exc}", file=sys.stderr)
        return 2
