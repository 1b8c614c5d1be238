"""The parts of ``benchmarks/report.py``: loading and aggregating the suite's results files
(:mod:`.aggregate`), formatting (:mod:`.format`), the columns read from the job table
(:mod:`.columns`), the removed options (:mod:`.dropped`), and one module per section of
``docs/results.md``: :mod:`.setup`, :mod:`.table1`, :mod:`.table1_long`, :mod:`.fig4` (and the
ensembles), :mod:`.longpre`, :mod:`.step_budgets`, :mod:`.fig5`, :mod:`.table2`, :mod:`.variants`,
:mod:`.probe`, :mod:`.tried`, :mod:`.calibration`; the figures are drawn by :mod:`.figures`."""
