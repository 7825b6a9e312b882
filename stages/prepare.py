"""DVC stage `prepare`: validate, hash and split the images or texts; write the manifest."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--source", help="image or text folder, or manifest (default: data.source)")
    parser.add_argument("--manifest", required=True, help="output Parquet manifest")
    parser.add_argument("--report", required=True, help="output JSON data report")
    parser.add_argument("--texts", help="output folder for texts given inline in a manifest (<sha256>.txt)")
    args = parser.parse_args()

    from transferkit.data.prepare import prepare

    stage.run_stage("prepare", args, lambda params, tracker: prepare(args.source or params.data.source, args.manifest,
                                                                 args.report, params.data, args.texts))


if __name__ == "__main__":
    stage.run_script(main, "prepare")
