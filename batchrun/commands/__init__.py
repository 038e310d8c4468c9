"""The read-only commands (status, report, export, export-media): they read the output, never the network."""
