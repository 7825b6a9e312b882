import json

import numpy as np

from transferkit.cli import collect_images, main

from conftest import draw_example, save_colour_model


def test_collect_images_searches_folders_and_reports_what_it_cannot_use(tmp_path):
    (tmp_path / "a" / ".hidden").mkdir(parents=True)
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "a" / ".hidden" / "y.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("")
    (tmp_path / "empty").mkdir()
    images, problems = collect_images([str(tmp_path / "a"), str(tmp_path / "empty"), str(tmp_path / "gone.png")])
    assert images == [tmp_path / "a" / "x.png"]
    assert problems == [(str(tmp_path / "empty"), "folder holds no image files"),
                        (str(tmp_path / "gone.png"), "no such file or folder")]


def test_predict_prints_labels_and_skips_bad_files(tmp_path, capsys):
    model, info = save_colour_model(tmp_path)
    rng = np.random.default_rng(1)
    draw_example("square", 40, rng).save(tmp_path / "square one.png")
    draw_example("circle", 40, rng).save(tmp_path / "circle.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    args = ["predict", str(tmp_path / "square one.png"), str(tmp_path / "circle.jpg"), str(tmp_path / "broken.png"),
            "--model", str(model), "--model-info", str(info)]
    assert main(args + ["--top-k", "2"]) == 1  # a file was skipped
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0] == "path,rank,label,probability"
    assert lines[1].startswith(f"{tmp_path / 'square one.png'},1,square,") and len(lines) == 5
    assert "skipped" in err and "broken.png" in err

    assert main(args[:3] + args[4:] + ["--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["predictions"][0]["label"] for r in results] == ["square", "circle"]

    assert main(args[:3] + args[4:] + ["--format", "json", "--runtime", "litert"]) == 0
    assert [r["predictions"][0]["label"] for r in json.loads(capsys.readouterr().out)] == ["square", "circle"]


def test_predict_prints_the_model_s_own_probabilities_on_every_runtime(tmp_path, capsys):
    """No test-time flip unless asked, and --runtime is the runtime: a model that sees only the left half
    of an image (red left, blue right) gives exactly its own probabilities."""
    import keras
    from PIL import Image

    from transferkit.deliver.published import ModelInfo, save_published

    inputs = keras.Input((32, 32, 3), name="image")
    left = keras.layers.GlobalAveragePooling2D()(keras.layers.Cropping2D(((0, 0), (0, 16)))(inputs))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Rescaling(1 / 255)(left)))
    dense.set_weights([4 * np.eye(3, dtype=np.float32), np.zeros(3, np.float32)])
    info = ModelInfo(classes=["red", "green", "blue"], image_size=32, backbone="left half",
                     backbone_weights_sha256="0" * 64)
    save_published(model, info, tmp_path / "m.keras", tmp_path / "m.json")
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16, 0] = pixels[:, 16:, 2] = 255
    Image.fromarray(pixels).save(tmp_path / "red left.png")
    expected = model.predict(pixels[None].astype(np.float32), verbose=0)[0]
    assert expected[0] > 0.9  # red; the flipped image would say blue
    for runtime in ("tensorflow", "litert", "onnx"):
        assert main(["predict", str(tmp_path / "red left.png"), "--model", str(tmp_path / "m.keras"), "--model-info",
                     str(tmp_path / "m.json"), "--format", "json", "--top-k", "3", "--runtime", runtime]) == 0
        got = {p["label"]: p["probability"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]}
        assert np.allclose([got[c] for c in info.classes], expected, atol=1e-5), (runtime, got, expected)


def test_predict_without_a_model_is_one_clear_line(tmp_path, capsys):
    draw_example("square", 40, np.random.default_rng(1)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "none.keras"),
                 "--model-info", str(tmp_path / "none.json")]) == 1
    assert "error:" in capsys.readouterr().err


def test_predict_reads_text_files_folders_and_texts_on_every_runtime(tmp_path, capsys):
    from text_models import text_project

    manifest, model, info = text_project(tmp_path)
    folder = tmp_path / "texts" / "sports"
    (folder / "picture.png").write_bytes(b"not a text file type: not offered")
    (tmp_path / "empty.txt").write_text(" \n")
    args = ["predict", str(folder), str(tmp_path / "empty.txt"), "--text", "rain snow forecast", "--text", "",
            "--model", str(model), "--model-info", str(info), "--format", "json"]
    answers = {}
    for runtime in ("tensorflow", "litert", "onnx"):
        assert main(args + ["--runtime", runtime]) == 1  # two inputs skipped
        out, err = capsys.readouterr()
        answers[runtime] = json.loads(out)
        assert f"skipped {tmp_path / 'empty.txt'}: empty text (nothing but whitespace)" in err
        assert "skipped --text 2: empty text" in err
    rows = answers["tensorflow"]
    assert [r["path"] for r in rows] == [str(p) for p in sorted(folder.glob("*.txt"))] + ["--text 1"]
    assert [r["predictions"][0]["label"] for r in rows] == ["sports"] * 8 + ["weather"]
    for other in ("litert", "onnx"):
        for mine, theirs in zip(rows, answers[other], strict=True):
            assert mine["predictions"][0]["label"] == theirs["predictions"][0]["label"], other
            assert abs(mine["predictions"][0]["probability"] - theirs["predictions"][0]["probability"]) < 1e-4, other


def test_text_on_an_image_model_is_one_clear_line(tmp_path, capsys):
    model, info = save_colour_model(tmp_path)
    assert main(["predict", "--text", "hello", "--model", str(model), "--model-info", str(info)]) == 2
    assert capsys.readouterr().err.strip() == (f"transferkit predict: error: --text needs a text model; {info} "
                                               f"describes an image model")
