"""How a request is read and answered: the entry point, parsing, headers, errors, middlewares."""
