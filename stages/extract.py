"""DVC stage `extract`: frozen-backbone embeddings, computed once per image and kept in the store."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--store", required=True, help="content-addressed embedding store (grows; shared by backbones)")
    parser.add_argument("--embeddings", required=True, help="output: the manifest's embeddings (.npz)")
    parser.add_argument("--metrics", required=True, help="output JSON: images computed and reused, throughput")
    args = parser.parse_args()

    from transferkit.extract import extract
    from transferkit.files import write_json

    params, tracking = stage.tracked("extract", args)
    with tracking as run:
        summary = extract(args.manifest, args.store, args.embeddings, params.backbone, params.extract,
                          params.data.seed)
        figures = {k: summary[k] for k in ("distinct_images", "computed", "reused", "seconds", "images_per_second")}
        write_json(args.metrics, figures)
        run.log_metrics({**figures, "batch_size": summary["batch_size"]})


if __name__ == "__main__":
    stage.run(main, "extract")
