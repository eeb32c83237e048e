"""``python -m udavae`` (also what ``torchrun -m udavae train ...`` runs)."""

from udavae.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
