"""Reusable ``@deploy`` functions, one per component; ``deploys/*.py`` call them in order."""
