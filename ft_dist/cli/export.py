"""`ft-dist export RUN_DIR --out DIR`: an ensemble's tickets as a sparse, checksummed artifact."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Write every ticket of RUN_DIR (EDST / single run) or of a DST Ensemble EXP_DIR to DIR,
channel-slim (every channel that contributes nothing, such as those channel-level DST
removed, is cut out with its BatchNorm statistics and biases; --no-slim keeps full shapes):
member_XX.bin (active values + a bitmask per masked layer, BatchNorm and other tensors
dense), artifact.json (preprocessing: image size, channels, mean/std, eval transform;
classes; per-tensor sha256), ensemble.pt2 (a torch.export program of the averaged-softmax
ensemble that runs with plain PyTorch: torch.export.load(path).module()(images); by default
the members packed into one network whose layers run all of them at once, checked against
the separate members; --program separate runs them one after another, as does a model that
cannot be packed, with a warning), member_XX.safetensors (every ticket at the
architecture's full width, masked layers as a bit-packed mask + active weights) with
load_ensemble.py (rebuilds the ensemble with torch, safetensors and the model's own library:
load_ensemble(DIR, build)), README.md (a Hugging Face model card: method, members, density,
data, test metrics from RUN_DIR/eval/report.json when `ft-dist evaluate` wrote one, FLOPs,
config, how to load) and SHA256SUMS (`sha256sum -c SHA256SUMS`). The artifact is read back
and verified before the command returns; the path of DIR is printed last.

--push-to-hub OWNER/NAME then uploads DIR to that Hugging Face model repository (created if
missing; needs a token: `hf auth login` or HF_TOKEN, checked before the export starts)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a run's tickets as a sparse artifact and a torch.export program",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run or experiment directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="artifact directory")
    parser.add_argument("--data", metavar="ROOT", help="dataset root (default: data.root)")
    parser.add_argument("--no-program", action="store_true", help="skip ensemble.pt2")
    parser.add_argument("--force", action="store_true", help="replace an export in DIR")
    parser.add_argument("--no-slim", action="store_true", help="keep removed channels (zeros)")
    parser.add_argument(
        "--program", choices=["auto", "packed", "separate"], default="auto",
        help="ensemble.pt2: members packed into one network or run one by one; auto (default): "
        "packed when the members are channel-slim, one by one when they are full width",
    )  # fmt: skip
    parser.add_argument(
        "--no-safetensors", action="store_true",
        help="skip member_XX.safetensors and load_ensemble.py",
    )  # fmt: skip
    parser.add_argument(
        "--report", metavar="REPORT_JSON",
        help="the ft-dist evaluate report.json whose metrics the model card shows "
        "(default: RUN_DIR/eval/report.json when it exists)",
    )  # fmt: skip
    parser.add_argument(
        "--push-to-hub", metavar="OWNER/NAME",
        help="upload DIR to this Hugging Face model repository after exporting",
    )  # fmt: skip
    parser.add_argument(
        "--private", action="store_true", help="with --push-to-hub: create the repository private"
    )
    parser.add_argument("--json", action="store_true", help="print the sizes as JSON")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from ft_dist.export import export_run

    token = None
    if args.push_to_hub:
        from ft_dist.export.hub import check_token

        token = check_token(args.push_to_hub)  # before the export: a missing login costs nothing
    elif args.private:
        raise ValueError("--private applies to --push-to-hub OWNER/NAME; give it too")
    result = export_run(
        args.run_dir,
        args.out,
        data_root=args.data,
        program=not args.no_program,
        force=args.force,
        slim=not args.no_slim,
        program_form=args.program,
        safetensors=not args.no_safetensors,
        report=args.report,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['num_members']} members, sparse files {result['sparse_bytes']:,} bytes")
        print(
            f"one dense state_dict (torch.save) {result['dense_state_dict_bytes']:,} bytes: "
            f"sparse / dense = {result['sparse_vs_one_dense']:.3f}"
        )
        if result["slim"]:
            params = ", ".join(f"{n:,}" for n in result["member_parameters"])
            print(f"slim members: {params} parameters (full model {result['full_parameters']:,})")
            print(f"kept channels of member 1: {format_kept(result)}")
        if result["program_bytes"] is not None:
            form = (
                "the members packed into one network"
                if result["program_form"] == "packed"
                else "the members one after another"
            )
            print(f"ensemble.pt2 {result['program_bytes']:,} bytes ({form}; dense weights)")
        if result["safetensors_bytes"] is not None:
            print(
                f"member_XX.safetensors {result['safetensors_bytes']:,} bytes (full width; "
                f"the tickets' .pt files: {result['ticket_bytes']:,})"
            )
    if args.push_to_hub:
        from ft_dist.export.hub import push

        url = push(result["out"], args.push_to_hub, token, private=args.private)
        print(f"uploaded to {url}", file=sys.stderr if args.json else sys.stdout)
    print(result["out"])
    return 0


def format_kept(result: dict) -> str:
    """'group kept/size' for each group member 1 cut."""
    sizes, kept = result["group_channels"], result["kept_channels"][0]
    cut = [f"{name} {kept[name]}/{size}" for name, size in sizes.items() if kept[name] < size]
    return ", ".join(cut) or "none cut"
