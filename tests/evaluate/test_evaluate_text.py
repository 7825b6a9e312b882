"""`evaluate` on a text model: the same metrics, the most confidently wrong texts, the TF-IDF baseline, no TTA."""

import numpy as np
import pandas as pd
import pytest

from transferkit.config import EvaluateParams
from transferkit.data.texts import load_text
from transferkit.evaluate.baselines import candidate_list, fit_baseline
from transferkit.evaluate.evaluate import ERROR_TEXT_CHARS, confident_errors, evaluate

from text_models import TEXT_CLASSES, text_project


def outputs_in(folder):
    from transferkit.evaluate.evaluate import EvaluateOutputs

    return EvaluateOutputs(confusion_csv=folder / "confusion.csv", predictions=folder / "predictions.csv",
                           errors=folder / "errors.csv", errors_html=folder / "errors.html",
                           confusion_png=folder / "confusion.png",
                           calibration_png=folder / "calibration.png", curves_png=folder / "curves.png")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return text_project(tmp_path_factory.mktemp("text-evaluate"))


def test_a_text_model_is_scored_with_the_tfidf_baseline_and_no_tta(project, tmp_path):
    manifest, model_path, info_path = project
    result = evaluate(manifest, model_path, info_path, outputs_in(tmp_path), {}, EvaluateParams(batch_size=4, tta=True),
                      seed=0)
    summary = result.summary
    assert summary["tta"] is False and "accuracy_without_tta" not in summary  # a flip is for images
    assert summary["test_images"] == 6 and summary["accuracy"] == 1.0
    assert summary["baseline"].startswith("tfidf_") and summary["baseline_accuracy"] == 1.0
    assert summary["gain_over_baseline"] == 0.0
    assert result.lines()[0].endswith("on 6 texts")
    assert "on the same test texts" in result.lines()[1]
    assert tmp_path / "errors.csv" in [a.path for a in result.attachments()]
    errors = pd.read_csv(tmp_path / "errors.csv")
    assert list(errors.columns) == ["path", "actual", "predicted", "probability", "text"] and errors.empty
    page = (tmp_path / "errors.html").read_text(encoding="utf-8")  # nothing wrong: the per-class strips, snippets
    assert "No wrong test text to show" in page and page.count("<pre") == 6 and "<img" not in page


def test_the_errors_file_has_the_most_confidently_wrong_texts_first(project):
    manifest, *_ = project
    test = pd.read_parquet(manifest).query("split == 'test'")
    paths, y_true = test["path"].to_numpy(), test["label_index"].to_numpy()
    probs = np.full((len(test), 3), 0.1)
    probs[range(len(test)), y_true] = 0.8  # right, except:
    probs[0] = [0.05, 0.05, 0.05]
    probs[0, (y_true[0] + 1) % 3] = 0.9  # wrong, sure
    probs[1] = [0.3, 0.3, 0.3]
    probs[1, (y_true[1] + 1) % 3] = 0.4  # wrong, unsure
    errors = confident_errors(paths, y_true, probs, list(TEXT_CLASSES), "text")
    assert errors["path"].tolist() == [paths[0], paths[1]] and errors["probability"].tolist() == [0.9, 0.4]
    assert errors["actual"][0] == TEXT_CLASSES[y_true[0]]
    assert errors["predicted"][0] == TEXT_CLASSES[(y_true[0] + 1) % 3]
    assert errors["text"][0] == load_text(paths[0])[:ERROR_TEXT_CHARS] and len(load_text(paths[0])) > ERROR_TEXT_CHARS
    assert "text" not in confident_errors(paths, y_true, probs, list(TEXT_CLASSES), "image").columns


def test_text_baseline_candidates_are_tfidf_word_and_char_svms_and_knn():
    names = [c.name for c in candidate_list(colour=False, embeddings=True, train_images=10, modality="text")]
    assert names == ["tfidf_word12_linear_svm_c0.1", "tfidf_word12_linear_svm_c1", "tfidf_word12_linear_svm_c10",
                     "tfidf_char25_linear_svm_c0.1", "tfidf_char25_linear_svm_c1", "tfidf_char25_linear_svm_c10",
                     "knn1_embeddings", "knn5_embeddings"]


def test_the_text_baseline_is_chosen_on_val_and_refitted_on_train_and_val(project):
    manifest, *_ = project
    frame = pd.read_parquet(manifest)
    result = fit_baseline(frame, None, max_train=1000, seed=0, modality="text")
    assert set(result.val_scores) == {c.name for c in candidate_list(False, False, 12, "text")}
    assert result.test_accuracy == 1.0 and result.colour is False
    assert (result.train_images, result.val_images, result.test_images) == (12, 6, 6)
