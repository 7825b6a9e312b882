"""DVC stage `prepare`: validate, hash and split the images; write the manifest."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--source", help="image folder or manifest (default: data.source)")
    parser.add_argument("--manifest", required=True, help="output Parquet manifest")
    parser.add_argument("--report", required=True, help="output JSON data report")
    args = parser.parse_args()

    from transferkit.data.prepare import prepare

    params, tracking = stage.tracked("prepare", args)
    with tracking as run:
        report = prepare(args.source or params.data.source, args.manifest, args.report, params.data)
        print(f"prepare: {report['images']} images in {len(report['classes'])} classes "
              f"(train {sum(report['per_split']['train'].values())}, val {sum(report['per_split']['val'].values())}, "
              f"test {sum(report['per_split']['test'].values())}); {len(report['rejected'])} rejected", flush=True)
        run.log_metrics({"images": report["images"], "classes": len(report["classes"]),
                         "rejected": len(report["rejected"]), "duplicate_files": report["duplicate_files"]})
        run.log_artifact(args.report)


if __name__ == "__main__":
    stage.run(main, "prepare")
