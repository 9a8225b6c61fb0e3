"""`te extract`: run a frozen backbone over a data set once, into the feature cache."""
