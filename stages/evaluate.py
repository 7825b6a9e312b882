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
    parser.add_argument("--confusion-png", required=True)
    parser.add_argument("--calibration-png", required=True)
    parser.add_argument("--curves-png", required=True)
    parser.add_argument("--history", nargs="*", default=[], metavar="PHASE=CSV",
                        help="training histories to draw, e.g. train_head=plots/train_head.csv")
    parser.add_argument("--report", help="data report to attach to the MLflow run")
    args = parser.parse_args()

    from dataclasses import fields
    from pathlib import Path

    from transferkit.evaluate.evaluate import EvaluateOutputs, evaluate, quality_gate
    from transferkit.deliver.published import load_published

    outputs = EvaluateOutputs(**{f.name: Path(getattr(args, f.name)) for f in fields(EvaluateOutputs)})
    params, tracking = stage.tracked("evaluate", args)
    with tracking as run:
        model, info = load_published(args.model, args.model_info)
        report = evaluate(args.manifest, model, info, outputs, dict(h.split("=", 1) for h in args.history),
                          params.evaluate, head_path=args.head, embeddings_path=args.embeddings)
        print(f"evaluate: test accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} "
              f"on {report['test_images']} images{' (with TTA)' if report['tta'] else ''}", flush=True)
        if "head_only_accuracy" in report:
            print(f"evaluate: head-only model (frozen backbone + head) {report['head_only_accuracy']:.4f}: "
                  f"fine-tuning bought {report['finetune_gain'] * 100:+.2f} points", flush=True)
        keys = ("accuracy", "macro_f1", "log_loss", "ece", "accuracy_without_tta", "head_only_accuracy",
                "head_only_macro_f1", "finetune_gain")
        headline = {k: report[k] for k in keys if k in report}
        run.log_metrics(headline)
        run.log_metrics({f"test_{k}": v for k, v in headline.items()}, parent=True)
        for png in (outputs.confusion_png, outputs.calibration_png, outputs.curves_png):
            run.log_artifact(png, "plots", parent=True)
        run.log_artifact(outputs.metrics, parent=True)
        if args.report:
            run.log_artifact(args.report, parent=True)
        run.log_artifact(args.model_info, parent=True)
        quality_gate(report, params.evaluate)


if __name__ == "__main__":
    stage.run_script(main, "evaluate")
