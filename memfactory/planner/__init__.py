"""The memory planner: :mod:`.costs` (a preset's knobs and the bytes of each part of a step) and
:mod:`.plan` (the verdict against a device, advice, the markdown ``memfactory plan`` prints)."""
