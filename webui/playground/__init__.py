"""The Playground tab: ``compare`` (build and run 2-4 workflows), ``render`` (tables, HTML, exports), ``tab``."""
