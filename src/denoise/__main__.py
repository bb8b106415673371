"""``python -m denoise``: the same command as the ``denoise`` console script."""

from denoise.cli import app

app(prog_name="denoise")
