"""The web application's own ``agents`` module (who is on call), named like the package that
openai-agents installs: here, in this folder, this one is the one imported."""

ON_CALL = ("ada", "grace")
