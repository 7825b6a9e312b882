"""DVC stage `finetune`: fine-tune whole backbone blocks by a recipe chosen from the data; publish the best on val."""

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
    parser.add_argument("--checkpoints", required=True,
                        help="checkpoint root: per-epoch checkpoints, a sub-folder per run, for resuming")
    args = parser.parse_args()

    from transferkit.train.distributed import cluster_from_env
    from transferkit.files import write_json
    from transferkit.train.finetune import finetune

    def run_finetune(params, tracker):
        return finetune(args.manifest, args.embeddings, args.head, args.model, args.model_info, args.history,
                        args.checkpoints, params.backbone, params.finetune, params.data.seed, tracker=tracker)

    if not cluster_from_env().chief:  # another worker of a TF_CONFIG cluster: trains, writes and records nothing
        from transferkit.config import load_params

        run_finetune(load_params(args.params), None)
        return
    params, tracking = stage.tracked("finetune", args)
    with tracking as run:
        result = run_finetune(params, run)
        write_json(args.metrics, result)
        recipe = result["recipe"]
        # What the recipe resolved to (auto fills the knobs left null), and why: beside finetune.* as set.
        run.log_params({f"recipe.{k}": v for k, v in recipe.items() if k != "reasons"})
        run.log_params({"recipe.reasons": " | ".join(recipe["reasons"])[:6000], "published": result["published"],
                        "published_why": result["published_why"][:6000]})
        run.log_metrics({k: v for k, v in result.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None})

if __name__ == "__main__":
    stage.run(main, "finetune")
