"""Commands of the ``exitnet`` CLI, one module each with ``register(app: typer.Typer) -> None``."""
