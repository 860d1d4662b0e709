"""Runnable research programs: ``python -m studies.<name> --help``.

Each study has ``run(config) -> report`` and a ``__main__`` guard, takes ``--out DIR``,
``--model``, ``--device`` and ``--seed``, and writes ``report.json``, ``report.md`` and PNG figures
into ``--out``. The library never imports this package.
"""
