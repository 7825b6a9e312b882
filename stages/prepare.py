"""DVC stage `prepare`: validate, hash and split the images; write the manifest."""

import argparse

from transferkit import stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--source", help="image folder or manifest (default: data.source)")
    parser.add_argument("--out", required=True, help="folder for manifest.parquet, classes.json, report.json")
    args = parser.parse_args()

    from transferkit.config import load_params
    from transferkit.data import prepare
    from transferkit.tracking import StageRun

    params = load_params(args.params)
    with StageRun("prepare", params, {"data": params.data.model_dump()}) as run:
        report = prepare(args.source or params.data.source, args.out, params.data)
        print(f"prepare: {report['images']} images in {len(report['classes'])} classes "
              f"(train {sum(report['per_split']['train'].values())}, val {sum(report['per_split']['val'].values())}, "
              f"test {sum(report['per_split']['test'].values())}); {len(report['rejected'])} rejected", flush=True)
        run.log_metrics({"images": report["images"], "classes": len(report["classes"]),
                         "rejected": len(report["rejected"]), "duplicate_files": report["duplicate_files"]})
        run.log_artifact(f"{args.out}/report.json")


if __name__ == "__main__":
    stage.run(main, "prepare")
