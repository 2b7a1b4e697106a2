"""What a person or a program touches: the CLI, the HTTP API and its Python client, and
Flower with the pipeline's pages."""
