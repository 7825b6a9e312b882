"""DVC stage `finetune`: fine-tune whole backbone blocks by a recipe chosen from the data; publish the best on val."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--embeddings", required=True, help="only read to check the backbone matches extract's")
    parser.add_argument("--head", required=True)
    parser.add_argument("--model", required=True, help="output .keras file (pixels -> probabilities)")
    parser.add_argument("--model-info", required=True, help="output JSON describing the model (classes, input)")
    parser.add_argument("--companion", help="the companion stage's folder: a candidate when it holds a model")
    parser.add_argument("--head-history", help="train_head's history CSV: its best epoch count (finetune.refit)")
    parser.add_argument("--history", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--checkpoints", required=True,
                        help="checkpoint root: per-epoch checkpoints, a sub-folder per run, for resuming")
    args = parser.parse_args()

    from transferkit.train.distributed import cluster_from_env
    from transferkit.train.finetune import finetune

    # Another worker of a TF_CONFIG cluster than the chief trains, and writes and records nothing.
    stage.run_stage("finetune", args, lambda params, tracker: finetune(
        args.manifest, args.embeddings, args.head, args.model, args.model_info, args.history, args.checkpoints,
        params.backbone, params.finetune, params.data.seed, tracker=tracker, companion_path=args.companion,
        text_params=params.text, head_params=params.head, companion_params=params.companion,
        head_history=args.head_history),
        metrics=args.metrics, record=cluster_from_env().chief)


if __name__ == "__main__":
    stage.run_script(main, "finetune")
