"""One module per tab of the Advanced column: each has a build(page) and plain handlers."""
