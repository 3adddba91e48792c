"""benchmarks/paper_tables.py's parts: presets and recipes, what is reported (models, sections,
rows, the paper's figures), resumable stages, the pipeline, and the report."""
