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

    from transferkit.train.train_head import train_head

    stage.run_stage("train_head", args, lambda params, tracker: train_head(args.manifest, args.embeddings, args.model,
                                                                       args.history, params.head, params.data.seed,
                                                                       tracker=tracker),
                    metrics=args.metrics)


if __name__ == "__main__":
    stage.run_script(main, "train_head")
