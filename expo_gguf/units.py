"""How sizes are printed, in one place for every command."""


def human_bytes(n: int) -> str:
    """GB above 100 MB, MB below: the units `ls -lh` users and model cards use (decimal)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
