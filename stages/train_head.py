"""DVC stage `train_head`: train the new classifier head on the cached embeddings."""

import argparse

from transferkit import stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--model", required=True, help="output .keras file (embedding -> probabilities)")
    parser.add_argument("--history", required=True, help="output per-epoch CSV")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()

    from transferkit.config import load_params
    from transferkit.files import write_json
    from transferkit.head import train_head
    from transferkit.tracking import StageRun

    params = load_params(args.params)
    with StageRun("train_head", params, {"head": params.head.model_dump()}) as run:
        result = train_head(args.manifest, args.features, args.model, args.history, params.head,
                            params.data.seed, tracker=run)
        write_json(args.metrics, result)
        run.log_metrics({k: v for k, v in result.items() if v is not None})


if __name__ == "__main__":
    stage.run(main, "train_head")
