"""DVC stage `extract`: frozen-backbone embeddings, computed once per image and kept in the store."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--store", required=True, help="content-addressed embedding store (grows; shared by backbones)")
    parser.add_argument("--embeddings", required=True, help="output: the manifest's embeddings (.npz)")
    parser.add_argument("--metrics", required=True, help="output JSON: images computed and reused")
    args = parser.parse_args()

    from transferkit.embeddings.extract import extract
    from transferkit.files import write_json

    params, tracking = stage.tracked("extract", args)
    with tracking as run:
        summary = extract(args.manifest, args.store, args.embeddings, params.backbone, params.extract,
                          params.data.seed)
        # The metrics file (what `dvc exp show` compares) holds counts only; timings differ from run to
        # run on the same inputs, so they go to MLflow and the terminal.
        counts = {k: summary[k] for k in ("distinct_images", "computed", "reused")}
        write_json(args.metrics, counts)
        timings = {k: summary[k] for k in ("seconds", "warmup_seconds", "images_per_second")}
        run.log_metrics({**counts, **timings, "batch_size": summary["batch_size"]})
        if summary["computed"]:
            print(f"extract: {summary['computed']} images in {summary['seconds']:.1f} s "
                  f"({summary['images_per_second']:.1f} images/s, after a {summary['warmup_seconds']:.1f} s warm-up)",
                  flush=True)


if __name__ == "__main__":
    stage.run(main, "extract")
