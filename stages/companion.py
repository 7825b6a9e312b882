"""DVC stage `companion`: a small CNN trained from scratch at the images' native size, where it can pay."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="output folder: companion.json, and companion.keras if trained")
    parser.add_argument("--history", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--checkpoints", required=True,
                        help="checkpoint root: per-epoch checkpoints, a sub-folder per run, for resuming")
    args = parser.parse_args()

    from transferkit.train.companion import companion
    from transferkit.train.distributed import cluster_from_env

    # Only the chief of a TF_CONFIG cluster trains the companion (a small network); the others record nothing.
    chief = cluster_from_env().chief
    stage.run_stage("companion", args, lambda params, tracker: companion(
        args.manifest, args.out, args.history, args.checkpoints, params.companion, params.data.seed, chief=chief,
        tracker=tracker), metrics=args.metrics, record=chief)


if __name__ == "__main__":
    stage.run_script(main, "companion")
