"""DVC stage `extract`: frozen-backbone embeddings, computed once per image and cached."""

import argparse

from transferkit import stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--features", required=True, help="embedding cache folder")
    parser.add_argument("--metrics", required=True, help="JSON file for throughput figures")
    args = parser.parse_args()

    from transferkit.config import load_params
    from transferkit.features import extract
    from transferkit.files import write_json
    from transferkit.tracking import StageRun

    params = load_params(args.params)
    sections = {"backbone": params.backbone.model_dump(), "extract": params.extract.model_dump()}
    with StageRun("extract", params, sections) as run:
        summary = extract(args.manifest, args.features, params.backbone, params.extract, params.data.seed)
        figures = {k: summary[k] for k in ("distinct_images", "computed", "reused", "seconds", "images_per_second")}
        write_json(args.metrics, figures)
        run.log_metrics(figures)


if __name__ == "__main__":
    stage.run(main, "extract")
