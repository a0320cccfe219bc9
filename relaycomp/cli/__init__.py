"""The ``relaycomp`` command line: argument parsing and printing only."""
