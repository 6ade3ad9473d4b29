from ganflow.cli import entry

entry()
