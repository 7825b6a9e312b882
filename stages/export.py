"""DVC stage `export`: SavedModel, LiteRT and ONNX files, the parity gate; then registers the served model."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-info", required=True)
    parser.add_argument("--out", required=True, help="output folder: every exported file, each with <file>.json")
    parser.add_argument("--metrics", required=True, help="output JSON: the parity gate's figures per file")
    args = parser.parse_args()

    from pathlib import Path

    from transferkit.deliver import serving
    from transferkit.deliver.export import check, export
    from transferkit.deliver.published import load_published
    from transferkit.tracking.runs import flatten

    params, tracking = stage.tracked("export", args)
    with tracking as run:
        model, info = load_published(args.model, args.model_info)
        summary = export(args.manifest, model, info, args.out, args.metrics, params.export)
        figures = flatten(summary["artifacts"])  # recorded even when the gate fails
        run.log_metrics(figures)
        run.log_metrics({f"export.{k}": v for k, v in figures.items()}, parent=True)
        for name, figures in summary["artifacts"].items():
            print(f"export: {name}: max |prob diff| {figures['max_abs_diff']:.2g}, top-1 agreement "
                  f"{figures['top1_agreement']:.2%} on {summary['test_images']} test images", flush=True)
        check(summary)
        out = Path(args.out)
        uri = run.log_model(serving.model_file(), {serving.MODEL_ARTIFACT: str(out / "model.onnx"),
                                                   serving.INFO_ARTIFACT: str(out / "model.onnx.json")},
                            [serving.code_path()], serving.model_signature(info),
                            serving.input_example(summary["example"]), serving.pip_requirements(),
                            params.tracking.registered_model)
        print(f"export: parity gate passed; served model logged as {uri} and registered as "
              f"'{params.tracking.registered_model}'", flush=True)


if __name__ == "__main__":
    stage.run_script(main, "export")
