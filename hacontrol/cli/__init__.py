"""hactl, the operator command line."""
