"""crysdiff's benchmarks: the suite, the report and the measurements behind the README's figures.

Not part of the installed package. Each script runs as ``python benchmarks/NAME.py`` (see its
docstring) and imports as ``benchmarks.NAME`` from the repository root (pytest puts it on the path).
"""
