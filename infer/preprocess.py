"""The seed's spaCy step, shared by SVC training, export parity and scoring; and the BERT tweet normalisation.

spaCy blank English with the lookup lemmatizer from spacy-lookups-data (no model download): strip and lower-case
the text, lemmatize, drop stop words, punctuation and whitespace. The result is the kept lemmas joined by single
spaces, which the ONNX TF-IDF graph splits on whitespace.
"""
from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import Callable, Iterable, Iterator

PIPE_BATCH = 1000
MAX_CHARS = 100_000  # spaCy refuses texts over nlp.max_length (1M chars); a tweet is 280


@lru_cache(maxsize=1)
def spacy_pipeline():
    import spacy
    nlp = spacy.blank("en")
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    nlp.initialize()
    return nlp


def _kept_lemmas(doc) -> str:
    from spacy.lang.en.stop_words import STOP_WORDS

    kept = []
    for token in doc:
        if token.is_punct or token.is_space:
            continue
        lemma = token.lemma_.strip().lower() or token.lower_
        if lemma in STOP_WORDS or token.lower_ in STOP_WORDS:
            continue
        kept.append("_".join(lemma.split()))  # a lemma never carries a space into the TF-IDF split
    return " ".join(kept)


def preprocess_iter(texts: Iterable[str], batch_size: int = PIPE_BATCH) -> Iterator[str]:
    nlp = spacy_pipeline()
    lowered = (t[:MAX_CHARS].strip().lower() for t in texts)
    yield from (_kept_lemmas(doc) for doc in nlp.pipe(lowered, batch_size=batch_size))


def preprocess(texts: Iterable[str]) -> list[str]:
    """Texts -> space-joined kept lemmas, one string per text."""
    return list(preprocess_iter(texts))


# Tweet normalisation for the BERT path: training tokenizes normalize_tweets(texts), and the runtime applies the same
# function before its tokenizer when the model folder's meta.json names TEXT_NORMALIZATION (older folders: no
# normalisation, unchanged). Changing what the function does means a new name here, so that a served model never
# sees text prepared differently from what it was trained on.
TEXT_NORMALIZATION = "tweet-v1"
_MENTION = re.compile(r"@\w+")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


def normalize_tweet(text: str) -> str:
    """HTML entities unescaped (twice: the corpus holds doubly escaped ones such as `&amp;quot;`), @mentions to
    `@user`, links to `http`, runs of whitespace to one space, ends stripped."""
    if "&" in text:
        text = html.unescape(html.unescape(text))
    if "@" in text:
        text = _MENTION.sub("@user", text)
    # str.split() splits on exactly the characters regex \s matches (str.isspace), in about half the time
    return " ".join(_URL.sub("http", text).split())


def normalize_tweets(texts: Iterable[str]) -> list[str]:
    return [normalize_tweet(t) for t in texts]


def normalization_for(meta: dict) -> Callable[[list[str]], list[str]] | None:
    """The text normalisation a model folder's meta.json (or training record) names: None, or normalize_tweets."""
    name = meta.get("text_normalization")
    if name is None:
        return None
    if name != TEXT_NORMALIZATION:
        raise ValueError(f"unknown text_normalization {name!r} (this tsinfer knows {TEXT_NORMALIZATION!r}): "
                         "upgrade tsinfer or re-train")
    return normalize_tweets
