"""DVC stage `evaluate`: test-split metrics and plots; logs and registers the final model."""

import argparse

from transferkit import stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plots", required=True, help="folder for PNG plots and DVC plot data")
    parser.add_argument("--history", nargs="*", default=[], metavar="PHASE=CSV",
                        help="training histories to draw, e.g. train_head=plots/train_head.csv")
    parser.add_argument("--report", help="data report to attach to the MLflow run")
    args = parser.parse_args()

    from pathlib import Path

    from transferkit.config import load_params
    from transferkit.evaluate import evaluate, load_classifier
    from transferkit.finetune import metadata_path
    from transferkit.tracking import StageRun
    from transferkit.serving import model_signature, pip_requirements

    params = load_params(args.params)
    histories = dict(item.split("=", 1) for item in args.history)
    sections = {"evaluate": params.evaluate.model_dump(), "tracking": params.tracking.model_dump()}
    with StageRun("evaluate", params, sections) as run:
        model, meta = load_classifier(args.model)
        report = evaluate(args.manifest, model, meta, args.metrics, args.plots, histories, params.evaluate)
        print(f"evaluate: test accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} "
              f"on {report['test_images']} images", flush=True)
        headline = {k: report[k] for k in ("accuracy", "macro_f1", "log_loss", "ece")}
        run.log_metrics(headline)
        run.log_metrics({f"test_{k}": v for k, v in headline.items()}, parent=True)
        for png in sorted(Path(args.plots).glob("*.png")):
            run.log_artifact(png, "plots", parent=True)
        run.log_artifact(args.metrics, parent=True)
        if args.report:
            run.log_artifact(args.report, parent=True)
        uri = run.log_model(model, model_signature(meta), pip_requirements(), params.tracking.registered_model,
                            extra_files=[metadata_path(args.model)])
        print(f"evaluate: model logged as {uri} and registered as '{params.tracking.registered_model}'", flush=True)
        run.finish_pipeline()


if __name__ == "__main__":
    stage.run(main, "evaluate")
