"""The Chat tab: ``target`` (what to talk to), ``session`` (the turns), ``bankfiles`` (named banks), ``view``, ``tab``."""
