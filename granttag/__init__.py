"""granttag's faces: the command line (and, later, the HTTP API) around the classifier core."""
