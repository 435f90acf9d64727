"""One module per ``stylenat`` subcommand, each exposing ``COMMAND = Command(help, add_arguments, run)``."""
