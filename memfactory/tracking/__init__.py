"""tracking layer."""
