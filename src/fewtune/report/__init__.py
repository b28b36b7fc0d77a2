"""Reports: the analysis of a run folder (analysis.py), its Markdown, HTML, plots and terminal views."""
