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

    stage.run_stage("extract", args, lambda params, tracker: extract(args.manifest, args.store, args.embeddings,
                                                                 params.backbone, params.extract, params.data.seed,
                                                                 params.text),
                    metrics=args.metrics)


if __name__ == "__main__":
    stage.run_script(main, "extract")
