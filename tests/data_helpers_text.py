"""A custom op for text files: '<label> <words>' lines -> a numeric label, a length feature."""

import pandas as pd


def split_first_word(df: pd.DataFrame) -> pd.DataFrame:
    parts = df["text"].str.split(" ", n=1, expand=True)
    return pd.DataFrame({"y": parts[0].astype(int), "n": parts[1].str.len().astype(float)}, index=df.index)


def label_and_sentence(df: pd.DataFrame) -> pd.DataFrame:
    parts = df["text"].str.split(" ", n=1, expand=True)
    return pd.DataFrame({"y": parts[0].astype(int), "sentence": parts[1],
                         "n": parts[1].str.len().astype(float)}, index=df.index)
