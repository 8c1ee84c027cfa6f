"""The command line: one module per command group, no protocol code here."""
