"""The Assemble tab: ``form`` (the preset as form fields), ``files`` (save, load, download), ``tab`` (widgets)."""
