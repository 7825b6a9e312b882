"""DVC stage `export`: SavedModel, LiteRT and ONNX files, the parity gate, the browser page (image models); then
registers the served model."""

from transferkit import stage


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-info", required=True)
    parser.add_argument("--out", required=True, help="output folder: every exported file, each with <file>.json")
    parser.add_argument("--metrics", required=True, help="output JSON: the parity gate's figures per file")
    parser.add_argument("--web-runtime", required=True,
                        help="onnxruntime-web's dist folder (make install: npm ci), copied into <out>/web")
    args = parser.parse_args()

    from transferkit.deliver.export import export

    stage.run_stage("export", args, lambda params, tracker: export(
        args.manifest, args.model, args.model_info, args.out, params.export, params.tracking.registered_model,
        web_runtime=args.web_runtime),
        metrics=args.metrics)


if __name__ == "__main__":
    stage.run_script(main, "export")
