"""`ft-dist flops`: forward FLOPs per layer of a sparse model, and what whole runs cost.

Two modes. With flags (`--model`, `--density`, ...) it prices the paper's comparison (dense,
static, DST, EDST, DST Ensemble) for one model. With `--config CONFIG [key=value ...]` it
prices exactly the run that `ft-dist train CONFIG` would train: same model shape, layer
densities, ΔT, epochs and ensemble plan, so the figure is known before any GPU is booked.
The model is built on the meta device (no weights are allocated), so even ResNet-50 at
224x224 is counted in about a second.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ft_dist.cli.flops_report import format_layers, model_flops_report
from ft_dist.sparse.choices import SPARSE_INITS
from ft_dist.sparse.scores import GROWTH_SCORES

if TYPE_CHECKING:
    from ft_dist.sparse.flops import RunCost

# Defaults per model family: (num_classes, in_channels, image_size) of its usual dataset.
FAMILY_DEFAULTS = {
    "resnet": (1000, 3, 224),  # ImageNet
    "wrn": (100, 3, 32),  # CIFAR-100
    "small-cnn": (10, 1, 28),  # MNIST
    "timm:": (1000, 3, 224),  # ImageNet
    "torchvision:": (1000, 3, 224),
}
# Single-model rows of the paper's comparison; ensemble rows take their method's label.
SINGLE_LABELS = {"dense": "dense", "static": "static sparse", "dst": "DST"}


def run_label(name: str) -> str:
    from ft_dist.train.methods import ensemble_method

    return SINGLE_LABELS.get(name) or ensemble_method(name).label


# Flag-mode options; with --config the run's own values are used instead.
FLAG_DESTS = (
    "model", "density", "sparse_init", "dense_layers", "num_classes", "in_channels",
    "image_size", "epochs", "update_every", "growth", "members", "t_ex", "t_re",
)  # fmt: skip
EXAMPLES = """\
examples:
  ft-dist flops --model resnet50 --density 0.1            # the paper's comparison table
  ft-dist flops --config configs/cifar100_edst.yaml model.num_classes=100
  ft-dist flops --config configs/demo_edst.yaml sparsity.density=0.1 --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flops",
        help="forward FLOPs per layer of a sparse model and training FLOPs of whole runs",
        description=(
            "Count dense forward FLOPs per sparse weight with torch.utils.flop_counter,\n"
            "scale each by its density (SPEC §8, RigL convention) and price dense, static,\n"
            "DST, EDST and DST Ensemble runs relative to one dense run. Run defaults are the\n"
            "FreeTickets CIFAR setting (250 epochs, ΔT=1000, t_ex=150, t_re=100, M=3).\n\n"
            "With --config CONFIG [key=value ...], price the one run that\n"
            "`ft-dist train CONFIG [key=value ...]` would train instead: its model, layer\n"
            "densities, ΔT, epochs and ensemble plan, plus its absolute training FLOPs when\n"
            "the training split's manifest is on this machine."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="CONFIG",
        help="price the run of this training config (model shape from model.* or, when "
        "unset, from the local data manifest); replaces the model and run flags",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="with --config: dotted overrides, e.g. sparsity.density=0.1 model.num_classes=100",
    )
    _add_model_arguments(parser)
    _add_run_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(
        func=handle, flag_defaults={dest: parser.get_default(dest) for dest in FLAG_DESTS}
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="wrn-28-10",
        help="resnet18/34/50, wrn-D-W, small-cnn, timm:NAME, torchvision:NAME, "
        "package.module:callable or path/to/file.py:callable (default: %(default)s)",
    )
    parser.add_argument(
        "--density",
        type=float,
        default=0.2,
        help="global density d in (0, 1] (default: %(default)s)",
    )
    parser.add_argument(
        "--sparse-init",
        default="erk",
        choices=list(SPARSE_INITS),
        help="default: %(default)s",
    )
    parser.add_argument(
        "--dense-layers", nargs="*", default=[], metavar="NAME", help="weights kept dense"
    )
    parser.add_argument("--num-classes", type=int, help="default: 1000 resnet, 100 wrn, 10 cnn")
    parser.add_argument("--in-channels", type=int, help="default: 3 (1 for small-cnn)")
    parser.add_argument("--image-size", type=int, help="default: 224 resnet, 32 wrn, 28 cnn")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    runs = parser.add_argument_group("run pricing (SPEC §8)")
    runs.add_argument(
        "--epochs",
        type=int,
        default=250,
        help="epochs of dense/static/DST runs (default: %(default)s)",
    )
    runs.add_argument(
        "--update-every",
        type=float,
        default=1000,
        help="ΔT in optimizer steps (default: %(default)s)",
    )
    runs.add_argument(
        "--growth",
        default="gradient",
        choices=sorted(GROWTH_SCORES),
        help="default: %(default)s",
    )
    runs.add_argument(
        "--members", type=int, default=3, help="ensemble size M (default: %(default)s)"
    )
    runs.add_argument(
        "--t-ex", type=int, default=150, help="EDST exploration epochs (default: %(default)s)"
    )
    runs.add_argument(
        "--t-re",
        type=int,
        default=100,
        help="EDST refinement epochs per member (default: %(default)s)",
    )


def model_shape_defaults(model: str) -> tuple[int, int, int]:
    """(num_classes, in_channels, image_size) usual for the model family."""
    for family, defaults in FAMILY_DEFAULTS.items():
        if model.startswith(family):
            return defaults
    raise ValueError(f"--model {model!r}: give --num-classes, --in-channels and --image-size")


def handle(args: argparse.Namespace) -> int:
    if args.config is not None:
        changed = [
            "--" + dest.replace("_", "-")
            for dest, default in args.flag_defaults.items()
            if getattr(args, dest) != default
        ]
        if changed:
            raise ValueError(
                f"--config takes the model and run settings from {args.config}: drop "
                f"{', '.join(changed)} and use overrides such as sparsity.density=0.1"
            )
        from ft_dist.cli.flops_config import handle_config

        return handle_config(args.config, args.overrides, as_json=args.json)
    if args.overrides:
        raise ValueError(
            f"key=value overrides ({' '.join(args.overrides)}) need --config CONFIG; "
            "without it use the flags (see ft-dist flops --help)"
        )
    return handle_flags(args)


def handle_flags(args: argparse.Namespace) -> int:
    """The paper's comparison (dense ... DST Ensemble) for the model given by flags."""
    from ft_dist.models.names import check_model_name
    from ft_dist.train.methods.pricing import price_paper_runs

    check_model_name(args.model)
    defaults = model_shape_defaults(args.model)
    shape = [
        value if value is not None else default
        for value, default in zip(
            (args.num_classes, args.in_channels, args.image_size), defaults, strict=True
        )
    ]
    report = model_flops_report(
        args.model, *shape, args.density, args.sparse_init, tuple(args.dense_layers)
    )
    runs = price_paper_runs(
        report.dense_forward_flops,
        report.sparse_forward_flops,
        epochs=args.epochs,
        num_members=args.members,
        exploration_epochs=args.t_ex,
        refinement_epochs=args.t_re,
        growth=args.growth,
        update_every_steps=args.update_every,
    )
    if args.json:
        settings = {
            "model": args.model,
            "num_classes": shape[0],
            "in_channels": shape[1],
            "image_size": shape[2],
            "density": args.density,
            "sparse_init": args.sparse_init,
        }
        runs_json = {name: cost.to_dict() for name, cost in runs.items()}
        print(json.dumps(settings | report.to_dict() | {"runs": runs_json}, indent=2))
    else:
        print(format_layers(report))
        print()
        print(format_runs(runs))
    return 0


def format_runs(runs: dict[str, RunCost]) -> str:
    header = f"{'run':<14} {'members':>7} {'epochs':>7} {'train FLOPs':>12} {'inference':>10}"
    lines = [header, "-" * len(header)]
    for name, cost in runs.items():
        lines.append(
            f"{run_label(name):<14} {cost.num_members:>7} {cost.total_epochs:>7} "
            f"{cost.train_relative:>11.3f}x {cost.inference_relative:>9.3f}x"
        )
    reference = next(iter(runs.values())).reference_epochs
    lines.append(f"(relative to one dense run of {reference} epochs; EDST epochs = t_ex + M·t_re)")
    return "\n".join(lines)
