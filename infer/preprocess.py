"""The seed's spaCy step, shared by SVC training, export parity and scoring.

spaCy blank English with the lookup lemmatizer from spacy-lookups-data (no model download): strip and lower-case
the text, lemmatize, drop stop words, punctuation and whitespace. The result is the kept lemmas joined by single
spaces, which the ONNX TF-IDF graph splits on whitespace.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Iterator

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
