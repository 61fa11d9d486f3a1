"""The Runs tab: ``records`` (the runs table, one run's details, its preset file, deletion), ``tab``."""
