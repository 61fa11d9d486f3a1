"""The Export tab: ``actions`` (what to export, the command, the export, files, load and test), ``tab``."""
