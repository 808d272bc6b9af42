"""Ops on text and images: the packaged encoder's tokenizer (``tokenize``) and pixel columns (``image``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from maas.data.accounting import column_check, mark
from maas.exceptions import DataError
from maas.spec import ImageOp, TokenizeOp


def image_op(df: pd.DataFrame, op: ImageOp, where: str) -> pd.DataFrame:
    """'image' column (HxW[xC] uint8 arrays) -> pixel_0..pixel_N float columns in [0, 1]."""
    from PIL import Image

    column_check(df, ["image"], where)
    size, gray = op.size, op.grayscale
    rows = []
    for img in df["image"]:
        im = Image.fromarray(np.asarray(img, dtype=np.uint8))
        if gray:
            im = im.convert("L")
        if size:
            im = im.resize((int(size[1]), int(size[0])))
        rows.append(np.asarray(im, dtype=np.float32).ravel() / 255.0)
    pixels = pd.DataFrame(np.stack(rows) if rows else np.zeros((0, 0), np.float32), index=df.index)
    pixels.columns = [f"pixel_{j}" for j in range(pixels.shape[1])]
    rest = df.drop(columns=["image"])
    return pd.concat([pixels, rest], axis=1)


_TOKENIZERS: dict = {}


def tokenizer_for(model: str, max_length: int):
    """The (cached) fast tokenizer of a packaged encoder, truncating and padding to ``max_length``."""
    key = (model, max_length)
    if key not in _TOKENIZERS:
        from tokenizers import Tokenizer

        from maas.exceptions import MaasError
        from maas.models.encoder import TOKENIZER, pretrained_dir

        try:
            folder = pretrained_dir(model)
        except MaasError as err:
            raise DataError(f"tokenize: {err}") from None
        tok = Tokenizer.from_file(str(folder / TOKENIZER))
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def tokenize_op(df: pd.DataFrame, live: np.ndarray, op: TokenizeOp, where: str) -> pd.DataFrame:
    """Text column -> 'input_ids' and 'attention_mask' (fixed-length int64 arrays) with the encoder's
    own tokenizer, so a model fine-tuned on them sees exactly what the encoder was trained on."""
    col, max_length = op.column, op.max_length
    column_check(df, [col], where)
    tok = tokenizer_for(op.model, max_length)
    ids = np.zeros((len(df), max_length), np.int64)
    mask = np.zeros((len(df), max_length), np.int64)
    rows = np.flatnonzero(live & df[col].notna().to_numpy(bool))
    if len(rows):
        encoded = tok.encode_batch(df[col].iloc[rows].astype(str).tolist())
        ids[rows] = [e.ids for e in encoded]
        mask[rows] = [e.attention_mask for e in encoded]
    mark(df, live & df[col].isna().to_numpy(bool), f"column '{col}' is null ({where})", "rejected")
    df = df.copy()
    df["input_ids"] = list(ids)
    df["attention_mask"] = list(mask)
    return df
