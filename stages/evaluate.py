"""DVC stage `evaluate`: test-split metrics and plots; the quality gate (evaluate.min_accuracy)."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-info", required=True)
    parser.add_argument("--head", help="the trained head: scored on the frozen backbone beside the published model")
    parser.add_argument("--embeddings", help="the manifest's embeddings (the head-only model's test inputs)")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--confusion-csv", required=True, help="DVC confusion-matrix plot data")
    parser.add_argument("--predictions", required=True, help="CSV of every test prediction")
    parser.add_argument("--errors", required=True, help="CSV of the most confidently wrong test items")
    parser.add_argument("--errors-html", required=True, help="the error gallery: the same mistakes as thumbnails")
    parser.add_argument("--confusion-png", required=True)
    parser.add_argument("--calibration-png", required=True)
    parser.add_argument("--curves-png", required=True)
    parser.add_argument("--history", nargs="*", default=[], metavar="PHASE=CSV",
                        help="training histories to draw, e.g. train_head=plots/train_head.csv")
    parser.add_argument("--report", help="data report to attach to the MLflow run")
    args = parser.parse_args()

    from dataclasses import fields
    from pathlib import Path

    from transferkit.evaluate.evaluate import EvaluateOutputs, evaluate

    outputs = EvaluateOutputs(**{f.name: Path(getattr(args, f.name)) for f in fields(EvaluateOutputs)})
    histories = dict(h.split("=", 1) for h in args.history)
    stage.run_stage("evaluate", args, lambda params, tracker: evaluate(
        args.manifest, args.model, args.model_info, outputs, histories, params.evaluate, params.data.seed,
        head_path=args.head, embeddings_path=args.embeddings, report_path=args.report), metrics=args.metrics)


if __name__ == "__main__":
    stage.run_script(main, "evaluate")
