"""Evaluation: avg@k of an agent over eval sets, reported in the paper's Table 2 shape.

Every question is answered ``k`` times in one batched ``agent.run(..., group_size=k,
train=False)``; each path is scored with the set's metric (``Sample.meta["metric"]``, e.g.
``string_match_all`` for RULER sets, else the default metric), and a cell of the table is the mean
over the k paths and all questions (avg@k). Rows are models/checkpoints, columns the sets plus
their average, cells printed with 4 decimals.

``memfactory eval`` runs under a named protocol (:mod:`memfactory.eval.protocols`: ``memagent`` or
``memfactory``) that sets the prompts, sampling, caps and metrics; the protocol's ``metric_map``
turns a set's metric into the one scored (``sub_em`` -> ``memagent_sub_em`` under ``memagent``),
and the report, ``eval.json`` and every ``samples.jsonl`` record name the protocol.

One job per module:

* :mod:`~memfactory.eval.scoring` — a path's metric and score, :class:`SampleResult`.
* :mod:`~memfactory.eval.workflow` — :func:`evaluate_workflow`: one preset, a list of samples,
  per-sample results (answers, scores, latency, tokens, memory trace). The web UI's Playground and
  the CLI both use it.
* :mod:`~memfactory.eval.results` — ``samples.jsonl`` (appended as each batch finishes) and
  ``eval.json`` (the settings a resumed run must share).
* :mod:`~memfactory.eval.tables` — the avg@k table and, for sets whose samples carry
  ``meta["category"]`` (LoCoMo: 1 multi-hop ... 5 adversarial, named by ``meta["category_name"]``),
  the per-category tables (rows = models, columns = categories + overall), as markdown and CSV.
* :mod:`~memfactory.eval.run` — :func:`run_eval`: many rows x many sets, resumable: a rerun with
  the same folder skips the (row, set, sample) triples already in ``samples.jsonl``;
  ``table.md`` / ``table.csv`` (and ``categories.md`` / ``categories.csv``) are rewritten at the
  end from everything in it.
* :mod:`~memfactory.eval.protocols` — the named protocols.
"""
