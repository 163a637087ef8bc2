"""Turn -> static HTML and plain text (widgets and plots build on these)."""
