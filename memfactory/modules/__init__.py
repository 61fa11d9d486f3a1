"""modules layer."""

from memfactory.modules import extractor, recurrent, reranker, retriever, updater  # noqa: F401  (registers modules)
