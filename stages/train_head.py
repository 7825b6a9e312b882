"""DVC stage `train_head`: train the new classifier head on the cached embeddings."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--embeddings", required=True, help="the manifest's embeddings, written by extract")
    parser.add_argument("--model", required=True, help="output .keras file (embedding -> probabilities)")
    parser.add_argument("--history", required=True, help="output per-epoch CSV")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()

    from transferkit.files import write_json
    from transferkit.train.train_head import train_head

    params, tracking = stage.tracked("train_head", args)
    with tracking as run:
        result = train_head(args.manifest, args.embeddings, args.model, args.history, params.head,
                            params.data.seed, tracker=run)
        write_json(args.metrics, result)
        run.log_metrics({k: v for k, v in result.items() if v is not None})


if __name__ == "__main__":
    stage.run(main, "train_head")
