"""DVC stage `finetune`: unfreeze the top of the backbone and train at a low learning rate."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--embeddings", required=True, help="only read to check the backbone matches extract's")
    parser.add_argument("--head", required=True)
    parser.add_argument("--model", required=True, help="output .keras file (pixels -> probabilities)")
    parser.add_argument("--model-info", required=True, help="output JSON describing the model (classes, input)")
    parser.add_argument("--history", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--checkpoints", required=True, help="per-epoch checkpoints, for resuming")
    args = parser.parse_args()

    from transferkit.files import write_json
    from transferkit.finetune import finetune

    params, tracking = stage.tracked("finetune", args)
    with tracking as run:
        result = finetune(args.manifest, args.embeddings, args.head, args.model, args.model_info, args.history,
                          args.checkpoints, params.backbone, params.finetune, params.data.seed, tracker=run)
        write_json(args.metrics, result)
        run.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None})


if __name__ == "__main__":
    stage.run(main, "finetune")
