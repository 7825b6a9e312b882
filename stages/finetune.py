"""DVC stage `finetune`: unfreeze the top of the backbone and train at a low learning rate."""

import argparse

from transferkit import stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--features", required=True, help="only read to check the backbone matches extract's")
    parser.add_argument("--head", required=True)
    parser.add_argument("--model", required=True, help="output .keras file (pixels -> probabilities)")
    parser.add_argument("--history", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--checkpoints", required=True, help="per-epoch checkpoints, for resuming")
    args = parser.parse_args()

    from transferkit.config import load_params
    from transferkit.files import write_json
    from transferkit.finetune import finetune
    from transferkit.tracking import StageRun

    params = load_params(args.params)
    sections = {"backbone": params.backbone.model_dump(), "finetune": params.finetune.model_dump()}
    with StageRun("finetune", params, sections) as run:
        result = finetune(args.manifest, args.head, args.model, args.history, args.checkpoints, params.backbone,
                          params.finetune, params.data.seed, features_dir=args.features, tracker=run)
        write_json(args.metrics, result)
        run.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None})


if __name__ == "__main__":
    stage.run(main, "finetune")
