"""One module per `dico` command: `run(options)` (and, for train, `prepare`), each a thin shell over a library
function. dico.cli builds a command's flags from its options dataclass (dico.config) and imports the command's module
only when the command runs, so these modules import the library, and torch with it, at their top; train's is the
exception (see dico.commands.train)."""
