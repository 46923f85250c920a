"""The application: what the entry points under ``experiments/`` run.

Built on the core (`mmcompress`), the trainer (`mmcompress.train`) and the problems
(`mmcompress.problems`); nothing below this package imports it.

* `comparison`: one problem's runs (dense reference, pruning or sparse training, every
  method and variant on the run axis), their checkpoints, records and report;
* `study`: the fair protocol over task sets and sparsities, and its leaderboard;
* `leaderboard`: methods ranked per setting and compared with equal over a family;
* `report`: one comparison's report (tables, paired tests, sentences);
* `records`: the typed records the runs write and the report reads;
* `plots`: the report's and the leaderboard's figures;
* `progress`: the progress lines of a long run.
"""

__all__ = ["comparison", "leaderboard", "plots", "progress", "records", "report", "study"]
